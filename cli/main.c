/*
 * voltrack: a block-volume filter with crash-safe changed-block tracking,
 * exported over NBD.  This file only dispatches to the subcommands.
 */
#include <stdio.h>
#include <string.h>

#include "cli.h"

static const char usage[] =
"usage: voltrack COMMAND [ARGS]\n"
"\n"
"  init VOLUME [--size SIZE] [--granularity SIZE] [--meta DIR] [--force]\n"
"       [--diff-store PATH] [--diff-limit SIZE]\n"
"      Prepare VOLUME (a file or block device) for serving.  Creates a sparse\n"
"      file of SIZE when VOLUME does not exist.  GRANULARITY is the tracking\n"
"      block size, a power of two from 4K to 64M (default 64K).  Refuses to\n"
"      overwrite existing metadata unless --force is given.\n"
"\n"
"  serve VOLUME [--meta DIR] [--socket PATH] [--listen HOST:PORT]\n"
"        [--io-engine auto|io_uring|threads] [--workers N]\n"
"        [--max-connections N] [--handshake-timeout SEC] [--read-only]\n"
"        [--no-track] [--persist-interval MS] [--diff-store PATH]\n"
"        [--diff-limit SIZE] [--tls-creds DIR [--tls-verify-peer] | --tls-psk FILE]\n"
"      Export VOLUME over NBD in the foreground until SIGINT or SIGTERM.\n"
"      With --tls-creds (ca-cert.pem, server-cert.pem, server-key.pem, as\n"
"      for qemu-nbd) or --tls-psk (psktool's file) every client must use\n"
"      TLS; --tls-verify-peer also requires a client certificate.\n"
"      Listens on PATH (default DIR/nbd.sock), on TCP only with --listen,\n"
"      or on sockets passed by systemd (LISTEN_FDS).  Export \"\" is the\n"
"      live volume; --read-only refuses writes to it.  Every write is\n"
"      tracked unless --no-track is given (then the next tracked start\n"
"      reports everything changed).  The change map is written every\n"
"      --persist-interval milliseconds (default 1000) and on FLUSH.\n"
"      Snapshots copy old chunks into the diff store (DIR/diffstore, or\n"
"      --diff-store PATH), which grows to --diff-limit (default the\n"
"      volume's size); both default to what init was given.\n"
"\n"
"  checkpoint VOLUME NAME\n"
"      Close the current epoch under NAME: 'changes since NAME' starts here.\n"
"      At most 254 exist at once; delete old ones to go on for ever.\n"
"\n"
"  delete VOLUME NAME --forget [--json]\n"
"      Delete checkpoint NAME (durably, before it answers).  Without --forget,\n"
"      delete is about snapshot data of that name.\n"
"\n"
"  changes VOLUME --since NAME [--until NAME] [--json]\n"
"      Byte ranges changed since checkpoint NAME, merged, at the tracking\n"
"      granularity.  --json prints {\"granularity\":G,\"extents\":[...]}.\n"
"\n"
"  list VOLUME [--json]\n"
"      Checkpoints with their epoch, creation time and bytes changed since.\n"
"\n"
"  status VOLUME [--json]\n"
"      Generation, granularity, clean or recovered state, intent regions set,\n"
"      metadata size.\n"
"\n"
"  snapshot VOLUME NAME [--hold-timeout SEC] [--freeze-cmd CMD] [--thaw-cmd CMD]\n"
"        [--json]\n"
"      Take a copy-on-write snapshot and a checkpoint of the same name at one\n"
"      instant, through a flush-and-hold of at most --hold-timeout seconds\n"
"      (default 10, counted from the freeze hook).  Served read-only as\n"
"      export snapshot/NAME.\n"
"\n"
"  delete VOLUME NAME\n"
"      Drop snapshot NAME's data; its checkpoint stays.\n"
"\n"
"  check VOLUME\n"
"      Verify every checksum and structure of the metadata; exit 0 if sound.\n"
"\n"
"  backup VOLUME REPO [--full] [--jobs N] [--json] [--key FILE] [--meta DIR]\n"
"         [--socket PATH] [--chunk-size SIZE] [--no-compress]\n"
"         [--compress-level N] [--quiet]\n"
"      Back VOLUME up into repository REPO (created when missing) through\n"
"      its running server: a snapshot, only the chunks changed since the\n"
"      last backup, then the snapshot's data dropped.  Full when it must be,\n"
"      saying why.  --key FILE encrypts a new repository (AES-256-GCM).\n"
"      --compress-level N: zstd's level for this run, -7 to 19 but 0\n"
"      (default 1; the negative ones are faster and pack less).\n"
"\n"
"  backup --from URI [--bitmap NAME] REPO [same options]\n"
"      The same from any NBD export; incremental when it offers\n"
"      qemu:dirty-bitmap:NAME covering every change since the last backup.\n"
"\n"
"  restore REPO BACKUP|latest TARGET [--verify] [--jobs N] [--json] [--key FILE]\n"
"      Write a backup to a file, block device or NBD URI; holes stay sparse.\n"
"\n"
"  backups REPO [--json]\n"
"      The backups, their chains and sizes.\n"
"\n"
"  verify REPO [BACKUP] [--against URI]\n"
"      Check every chunk (or compare a backup with an export); each bad one\n"
"      is named with its backup, offset and digest.\n"
"\n"
"  prune REPO --keep-last N [--keep-daily N] [--keep-weekly N] [--keep-monthly N]\n"
"        [--dry-run] [--json]\n"
"      Remove the backups no rule keeps, then every chunk no backup names.\n"
"\n"
"  serve-backup REPO BACKUP|latest [--socket PATH] [--listen HOST:PORT] [--key FILE]\n"
"      Export a backup over NBD, read-only, until SIGINT or SIGTERM (socket\n"
"      default REPO/serve-ID.sock).\n"
"\n"
"  These talk to a running server through DIR/control.sock, or work on the\n"
"  metadata directly when no server runs.  All take [--meta DIR].\n"
"\n"
"  help      this text\n"
"  version   the version\n"
"\n"
"Metadata lives in DIR, by default VOLUME.voltrack next to a file volume.\n"
"Sizes take K, M, G and T suffixes (powers of 1024).\n";

int main(int argc, char **argv)
{
	if (argc < 2) {
		fputs(usage, stderr);
		return EXIT_USAGE;
	}
	const char *cmd = argv[1];
	if (!strcmp(cmd, "init"))
		return cmd_init(argc - 1, argv + 1);
	if (!strcmp(cmd, "serve"))
		return cmd_serve(argc - 1, argv + 1);
	if (!strcmp(cmd, "snapshot"))
		return cmd_snapshot(argc - 1, argv + 1);
	if (!strcmp(cmd, "backup"))
		return cmd_backup(argc - 1, argv + 1);
	if (!strcmp(cmd, "restore"))
		return cmd_restore(argc - 1, argv + 1);
	if (!strcmp(cmd, "backups"))
		return cmd_backups(argc - 1, argv + 1);
	if (!strcmp(cmd, "verify"))
		return cmd_verify(argc - 1, argv + 1);
	if (!strcmp(cmd, "prune"))
		return cmd_prune(argc - 1, argv + 1);
	if (!strcmp(cmd, "serve-backup"))
		return cmd_serve_backup(argc - 1, argv + 1);
	static const char *const tracking[] = { "checkpoint", "delete", "changes", "list", "status",
						"check" };
	for (size_t i = 0; i < sizeof(tracking) / sizeof(tracking[0]); i++)
		if (!strcmp(cmd, tracking[i]))
			return cmd_track(argc - 1, argv + 1);
	if (!strcmp(cmd, "help") || !strcmp(cmd, "--help") || !strcmp(cmd, "-h")) {
		fputs(usage, stdout);
		return 0;
	}
	if (!strcmp(cmd, "version") || !strcmp(cmd, "--version")) {
		printf("voltrack %s\n", VOLTRACK_VERSION);
		return 0;
	}
	fprintf(stderr, "voltrack: unknown command '%s'\n\n%s", cmd, usage);
	return EXIT_USAGE;
}
