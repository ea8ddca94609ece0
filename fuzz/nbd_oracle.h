/*
 * nbd_oracle: is what the server said a correct answer to what the
 * client sent?
 *
 * Walks the client's bytes as the server must read them (options, then
 * requests) beside the server's bytes, and checks, from NBD-NOTES and
 * the protocol rather than from the server's code: every option reply
 * is framed, echoes its option and ends in an ACK or an error; the
 * handshake enters transmission exactly when GO is acknowledged or
 * EXPORT_NAME answered; every transmission reply is framed, answers a
 * request the client made, and at most once; READ replies are structured
 * once structured replies are agreed; chunks are of a known type and
 * their payload fits it (offsets within the request, block-status
 * descriptors non-zero and within the request, REQ_ONE giving exactly
 * one); errors are from the NBD set.  Where the stream cannot be
 * attributed (two outstanding requests with one cookie but different
 * shapes) checking stops there; a server that closes mid-message after
 * a fatal client error is allowed.
 */
#ifndef VOLTRACK_FUZZ_NBD_ORACLE_H
#define VOLTRACK_FUZZ_NBD_ORACLE_H

#include <stddef.h>
#include <stdint.h>

void nbd_oracle_check(const uint8_t *client, size_t client_len,
		      const uint8_t *server, size_t server_len);

#endif
