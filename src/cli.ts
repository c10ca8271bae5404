import { Command, CommanderError, Option } from 'commander';
import type { GlobalFlags } from './config/load-config.js';
import { describeError, exitCodeOf, EXIT_USAGE } from './errors.js';
import { setupCommand } from './commands/setup.js';
import { backfillCommand } from './commands/backfill.js';
import { verifyCommand } from './commands/verify.js';
import { discoverCommand } from './commands/discover.js';
import { statusCommand } from './commands/status.js';
import { keygenCommand } from './commands/keygen.js';
import { runCommand } from './commands/run.js';
import { sweepWorkerCommand } from './commands/sweep-worker.js';
import { teardownCommand } from './commands/teardown.js';
import { grantsCommand } from './commands/grants.js';
import { reportCommand } from './commands/report.js';
import { pauseCommand, resumeCommand, setCommand } from './commands/control.js';
import { SETTING_NAMES } from './throttle/live-settings.js';
import { boundHeapGrowth } from './heap-growth.js';

const EXIT_CODES = `
Exit codes:
  0  ok (verify: converged)
  1  not converged: verify (old-version values remain, or transactions open at its count; with
     --decrypt target values that do not open; with --strict old-version values outside the
     configuration), discover (old-version values outside the configured columns), backfill
     (values left after its passes, quarantined ones included), run --exit-when-converged (only
     quarantined values left), report (its verdict: the old key must stay)
  2  usage or configuration error (flags, config file, keys, a target key that does not open the
     stored target values, tables, row security hiding rows, unlogged tables, triggers without a
     decision, a slot held by another run; teardown refusing while old-version values remain, or
     --drop-state without a report written after the last verify)
  3  runtime failure (database unreachable, wrong key, interrupted; run: a lost lease (another run
     took the slot, or the lease could not be taken again within 30 s), a configured table changed
     in a way run cannot follow, a drain unfinished at daemon.shutdown_timeout; run and backfill:
     critical load with throttle.critical_action: stop)`;

const KEYS = `
Keys (environment, or a dotenv file via --env-file; the environment wins):
  LIBSODIUM_ENCRYPTION_KEY          key of version v1 (64 hex characters)
  LIBSODIUM_ENCRYPTION_KEY_V2 .._V9 keys of versions v2..v9
  LIBSODIUM_ENCRYPTION_KEY_VERSION  target version new writes use, e.g. v2`;

function globals(cmd: Command): GlobalFlags {
  const o = cmd.optsWithGlobals<GlobalFlags>();
  return { config: o.config, envFile: o.envFile, databaseUrl: o.databaseUrl, logLevel: o.logLevel, logFormat: o.logFormat };
}

export function buildProgram(setExitCode: (code: number) => void): Command {
  const program = new Command('pg-rekey')
    .description(
      'Rotate libsodium application-level encryption keys in PostgreSQL without a maintenance window. ' +
        'Re-encrypts every "v<N>:" value of the configured columns to the target key version, ' +
        'with compare-and-swap writes that never overwrite an application write.',
    )
    .version('0.1.0')
    .addOption(new Option('-c, --config <file>', 'config file (or PG_REKEY_CONFIG)').default(undefined, './pg-rekey.yaml'))
    .option('--env-file <file>', "dotenv file with the key variables (the application's .env.local)")
    .option('--database-url <url>', 'connection string; overrides DATABASE_URL and `database:` in the config; several hosts, libpq style (postgres://u@h1:5432,h2:5432/db), and pg-rekey connects to the primary')
    .addOption(new Option('--log-level <level>', 'log level of the log lines on stderr (or PG_REKEY_LOG_LEVEL)').choices(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']))
    .addOption(
      new Option('--log-format <format>', 'pretty (time, level, component, message) or json lines; default pretty on a terminal, json otherwise (or PG_REKEY_LOG_FORMAT)').choices(['pretty', 'json']),
    )
    .showHelpAfterError('(run with --help for usage)')
    // Every subcommand's --help also lists -c, --env-file, --database-url, --log-level.
    .configureHelp({ showGlobalOptions: true })
    .addHelpText(
      'after',
      `${KEYS}
${EXIT_CODES}

Typical rotation:
  pg-rekey keygen                      # new key -> LIBSODIUM_ENCRYPTION_KEY_V2, deploy apps with VERSION=v2
  pg-rekey grants > grants.sql         # role, grants, publication for this config; psql -v pw=... -f grants.sql as a superuser
  pg-rekey setup -c pg-rekey.yaml      # as that role: checks, state schema, publication, slot (idempotent)
  pg-rekey backfill --dry-run          # what would be rewritten, nothing written
  pg-rekey verify                      # exit 1 expected: records the counts before the rotation
  pg-rekey run --exit-when-converged --quiet-period 15m   # until converged and no app wrote v1 for 15m
  pg-rekey verify --decrypt --strict   # every value opens; nothing outside the configuration
  pg-rekey discover --full             # exact: no old-version value anywhere else
  pg-rekey report --format html -o rotation.html   # the evidence to keep; exit 0: the old key can go
  pg-rekey teardown                    # drop slot + publication (--drop-state: after the report)`,
    )
    .exitOverride();

  const run = (fn: (cmd: Command) => Promise<number> | number) => async (...args: unknown[]) => {
    setExitCode(await fn(args[args.length - 1] as Command));
  };

  program
    .command('setup')
    .description('check server, role and tables; create the state schema, publication and replication slot (idempotent)')
    .addHelpText(
      'after',
      '\nChecks PostgreSQL >= 14, wal_level=logical, slot headroom, the REPLICATION attribute, privileges,\n' +
        'and that every configured column exists, is text-like, and its table has a primary key or replica\n' +
        'identity index. Reports every problem at once and changes nothing until all are fixed.\n' +
        'Lists the user triggers that fire on an UPDATE of a configured column (timing, level, ENABLE /\n' +
        'ENABLE ALWAYS / ENABLE REPLICA, function) and refuses until the config says `triggers: fire`\n' +
        'or `triggers: skip` (per table or top-level); skip needs a superuser or, on 15+, GRANT SET ON\n' +
        'PARAMETER session_replication_role (checked; the GRANT is printed), and setup names the\n' +
        'triggers that still fire under it. Warns about CHECK and domain constraints on the columns\n' +
        '(a rewrite that violates one is quarantined) and nondeterministic collations.\n' +
        'Then applies migrations, creates the publication (insert, update) and the slot (pgoutput).\n' +
        'Creating a slot restarts the sweep from block 0.\n' +
        'PostgreSQL 16+ (replication.origin: auto): creates the replication origins pgrekey_<slot>_sweep and\n' +
        '_stream if the role may, and says whether rewrites will carry them (consumers with origin = none\n' +
        'skip them); if not, why, with the GRANT EXECUTE / pg_replication_origin_create to run as a\n' +
        'superuser. replication.origin: on makes that a problem (exit 2).',
    )
    .action(run((cmd) => setupCommand(globals(cmd))));

  program
    .command('grants')
    .description('print the SQL (a psql script) that gives a role exactly what pg-rekey needs for this config')
    .option('--role <name>', 'the role pg-rekey will run as', 'rekey_worker')
    .addHelpText(
      'after',
      '\nRun it as an administrator (it reads the catalog, changes nothing), review the output, then apply it\n' +
        'as a superuser (or the tables\' owner plus a role that may grant REPLICATION):\n' +
        '  pg-rekey grants --database-url postgres://admin@db/cad > grants.sql\n' +
        '  psql -d cad -v pw=secret -f grants.sql\n' +
        'It creates the role (LOGIN REPLICATION) if missing, the pgrekey schema owned by it, SELECT on every\n' +
        'relation holding the configured tables\' rows and UPDATE on the encrypted columns only, pg_monitor,\n' +
        'BYPASSRLS where row level security is on, and the publication. ON_ERROR_STOP and one transaction: all\n' +
        'or nothing; running it twice changes nothing. Then `pg-rekey setup` as that role passes.',
    )
    .action(run((cmd) => grantsCommand(globals(cmd), cmd.opts())));

  program
    .command('backfill')
    .description('sweep every configured table by ctid block ranges, re-encrypting non-target values; re-check and make further passes over what is left, then exit')
    .option('--dry-run', 'read and decrypt, write nothing, report what would be done (always scans from block 0)')
    .option('--from <versions>', 'only rewrite these versions, e.g. v1 or v1,v3 (default: every non-target version)')
    .option('--restart', 'start over from block 0 instead of resuming from the last checkpoint')
    .option('--json', 'print the summary as JSON on stdout')
    .option('--fast', 'unthrottled (sweep.mode fast: no pacing, large chunks read ahead); for a suspected key compromise. Pauses, lag and load limits still apply')
    .addHelpText(
      'after',
      '\nEach chunk is one short transaction: it reads the rows with non-target values of a block\n' +
        'range, rewrites them with a compare-and-swap (ctid and old value must still match), records\n' +
        'undecryptable values in pgrekey.quarantine (untouched) and moves the checkpoint. Kill it at any\n' +
        'time; the next run resumes (from block 0 if the table was rewritten meanwhile, e.g. by VACUUM FULL).\n' +
        'Pacing (sweep.mode): auto (default) holds the latency of a probe of its own (a tiny commit and\n' +
        'read every sweep.probe_interval, on a connection of its own) near sweep.latency_ratio x the\n' +
        'baseline it learns while the sweep pauses, cutting its rate at once on a spike, on lock waits\n' +
        'behind the sweep, on standby, slot or archiver lag; duty: chunk_time and nice_ratio; --fast:\n' +
        'unthrottled, the next chunk read while the current one is written. sweep.max_rate and\n' +
        'max_wal_rate are hard limits; pauses (pg-rekey pause, the pause file, replica lag) always apply.\n' +
        'If the first values of a version all fail to decrypt it stops: wrong key for that version?\n' +
        'Before any write (--dry-run too) it decrypts a sample of the target-version values already\n' +
        'stored: if none opens with the target key, it exits 2 (is the target key the application\'s?).\n' +
        'Refuses (exit 2) a table with UPDATE triggers and no `triggers:` decision (see setup --help).\n' +
        'A row whose UPDATE raises (trigger, CHECK, domain) or whose rewrite does not stick is\n' +
        'quarantined with its reason; the rest goes on. After its pass it re-counts and sweeps again\n' +
        '(up to 3 times) the relations that still hold non-quarantined old-version values (rows moved\n' +
        'behind the sweep by the application), then reports what is left: exit 1 while anything is.\n' +
        'Progress: a bar on a terminal, JSON log lines on stderr otherwise. Ctrl-C finishes the chunk\n' +
        'in flight and exits 3; a second Ctrl-C exits at once.\n' +
        'Chunk writes carry the replication origin pgrekey_<slot>_sweep when it is on (see setup).\n' +
        'sweep.workers > 1: that many connections sweep each relation on leased block ranges, and\n' +
        '`pg-rekey sweep-worker` processes on other hosts may join (see sweep-worker --help).',
    )
    .action(run((cmd) => backfillCommand(globals(cmd), cmd.opts())));

  program
    .command('sweep-worker')
    .description('join the sweep of a running `pg-rekey run` (or backfill) from another host: lease block ranges until none is left, then exit 0')
    .option('--workers <n>', 'connections of this process (default: sweep.workers)')
    .addHelpText(
      'after',
      '\nWith sweep.workers > 1, run and backfill split each relation into block ranges\n' +
        '(pgrekey.sweep_range) that workers lease with FOR UPDATE SKIP LOCKED for sweep.range_lease\n' +
        '(renewed while they work). sweep-worker joins them: the same keys and config as run; it creates\n' +
        'no slot and starts no sweep (exit 2 when none is started). A relation is done only when every\n' +
        'range of its current generation is; the range of a worker that died is taken again when its\n' +
        'lease expires, from its last checkpoint. The pacing (max_rate, max_wal_rate, nice_ratio, the\n' +
        'auto rate) is split between the workers holding a range lease now, in every process; each\n' +
        'process runs its own latency probe in auto mode. SIGTERM: finish the chunk in flight, give\n' +
        'the range back at its checkpoint, exit 3.',
    )
    .action(run((cmd) => sweepWorkerCommand(globals(cmd), cmd.opts())));

  program
    .command('run')
    .description('the daemon: stream new old-key writes and sweep existing rows until stopped (or converged)')
    .option('--exit-when-converged', 'exit 0 once converged; exit 1 if the sweep is complete but quarantined values remain')
    .option('--quiet-period <duration>', 'with --exit-when-converged: exit 0 only once converged and no old-version write was seen for this long (e.g. 15m)')
    .option('--fast', 'sweep unthrottled (sweep.mode fast: no pacing, large chunks read ahead); for a suspected key compromise. Pauses, lag and load limits still apply')
    .option('--standby', 'when another run holds the slot, wait as a standby and take over when it dies (instead of exiting 2)')
    .addHelpText(
      'after',
      '\nConsumes the replication slot created by `setup` and rewrites every INSERT/UPDATE that carries an\n' +
        'old-version value as soon as it commits, while the sweep covers rows written before the slot.\n' +
        'Converged = every table swept since the slot was created, the stream caught up with the server,\n' +
        'and no old-version value left. It keeps running after that (stale writers may still appear).\n' +
        'HTTP: / (status page), /healthz, /readyz (stream connected), /metrics (Prometheus) on daemon.http_host:http_port\n' +
        '(a port in use: exit 2; set daemon.http_port, or 0 for a free one).\n' +
        'One daemon per slot: run holds a lease on its slot (an advisory lock on a connection of its own) for its\n' +
        'whole life; a second run on the same slot exits 2 at once, naming the first (pid, host, start time).\n' +
        'If the lease connection is lost, run stops with exit 3 (another run may take over).\n' +
        'Standbys (--standby): any number may wait on one slot; each serves HTTP (/healthz 200, /readyz 503\n' +
        '"standby", pg_rekey_leader 0) and shows in `status`. The lease holder leads in a fencing term (bumped by\n' +
        'each new holder); the database refuses state writes of an older term (SQLSTATE RKF01): a leader that was\n' +
        'paused and wakes up after a takeover logs FENCED and exits 3. Takeover after the leader dies (kill -9): the\n' +
        'lease within about 1 s (the standbys poll every second), streaming within 10 s. When the leader hangs\n' +
        '(SIGSTOP, a hung network) add up to 10 s: the lease session\'s idle_session_timeout (TCP keepalives and\n' +
        'tcp_user_timeout are set on it too). See README "HA and failover".\n' +
        'SIGTERM/SIGINT: finish the batch in flight, acknowledge, checkpoint, exit 0, all within\n' +
        'daemon.shutdown_timeout (10s); past it, exit 3 naming what was left (it replays from the slot).\n' +
        'A second signal exits at once (3).\n' +
        'A lost or dropped slot is recreated and the sweep restarts from block 0.\n' +
        'Row security turned on under run for a configured table or leaf this role would not see whole: run stops\n' +
        'with exit 2 naming the grant (BYPASSRLS, or the table\'s owner without FORCE); the slot keeps what was missed.\n' +
        'Rollout gate: every old-version value in an application INSERT/UPDATE the stream decodes (pg-rekey\'s\n' +
        'own rewrites aside) is recorded per version, table and column with its commit time (pgrekey.old_version_write,\n' +
        'pg_rekey_old_version_writes_total, pg_rekey_old_version_last_write_timestamp_seconds): an application\n' +
        'instance still writes the old key. With --quiet-period, --exit-when-converged waits until no such write\n' +
        'was committed for that long (counted from the last one, or the slot\'s creation; a new one restarts it).\n' +
        'PostgreSQL 16+: rewrites carry the replication origins pgrekey_<slot>_sweep / _stream (logged at start;\n' +
        'off, with the reason, without the grant; never for a table with UPDATE triggers or rules), so\n' +
        'consumers with origin = none skip them; the stream skips its own rewrites instead of comparing them.\n' +
        'sweep.workers > 1: that many connections sweep each relation on leased block ranges; a relation\n' +
        'counts as swept only when every range of its generation is; `pg-rekey sweep-worker` on other\n' +
        'hosts may join (see sweep-worker --help).',
    )
    .action(run((cmd) => runCommand(globals(cmd), cmd.opts())));

  program
    .command('teardown')
    .description('drop the replication slot, publication and replication origins once converged (refuses otherwise)')
    .option('--force', 'drop even if not converged or the daemon is running (terminates it)')
    .option('--drop-state', 'also drop the pgrekey schema (progress, quarantine, history); refused unless `pg-rekey report` was written after the last verify (or --force)')
    .addHelpText(
      'after',
      '\nA forgotten slot makes the server retain WAL until its disk fills: tear down when done.\n' +
        'Without --force it refuses while values of old versions remain or while a `run` holds the slot\n' +
        "(it names that daemon's pid and host), or while a relation that left a configured table (a\n" +
        'detached partition, a NO INHERIT child) holds old-version values and is not in `ignore:`.\n' +
        "--force ends the daemon's lease session first: it stops.",
    )
    .action(run((cmd) => teardownCommand(globals(cmd), cmd.opts())));

  program
    .command('verify')
    .description('count values by key version per table and column; exit 0 only when none but the target remain')
    .option('--json', 'print the report as JSON on stdout')
    .option('--decrypt', 'also open every v<N>: value with the key of its version (needs the target key; old keys optional)')
    .option('--sample <n>', 'with --decrypt: only n values of each column of each relation, from random block ranges (a quick pass)')
    .option('--strict', 'count what is found outside the configuration (and what could not be checked there) toward the exit code')
    .addHelpText(
      'after',
      '\nNeeds only LIBSODIUM_ENCRYPTION_KEY_VERSION (no keys), so it still runs after the old key\n' +
        'has been removed. Quarantined values count as remaining. Counts under one snapshot; the\n' +
        'transactions in progress at it (prepared ones included) must end within 5 s, or they are\n' +
        'listed and it exits 1. Exit 1 when not converged, 2 when row security would hide rows.\n' +
        '\nIt counts prefixes; it does not decrypt. --decrypt also opens every value (ctid chunks, throttled\n' +
        'like the sweep: sweep.chunk_time, nice_ratio, pause and load signals; progress on stderr) and\n' +
        'reports, per table and column, target-version values that do not open with the target key (an\n' +
        'application instance writing with another key: exit 1) and old-version values that do not open\n' +
        'with their own key (the rotation would quarantine them). Never a value; the first few by ctid.\n' +
        '  pg-rekey verify --decrypt --sample 200    # quick: 200 values per column, random blocks\n' +
        '  pg-rekey verify --decrypt                 # every value (as long as a sweep without writes)\n' +
        '\n"outside the configuration": the sampled check of `pg-rekey discover` (other columns and tables,\n' +
        'materialized views, json) for v<N>: values nothing rotates. It is a sample and does not change the\n' +
        'exit code unless --strict, which also counts columns it could not read. Distinct from "outside the\n' +
        'configured tables" (relations that were leaves of a configured table), which always counts.\n' +
        'Results of --decrypt and of the check are kept in pgrekey.check_result (after setup).\n' +
        '\nAfter setup it also prints the rollout gate: the last old-version write an application made, per\n' +
        'version ("last v1 write seen 4m ago (public.incidents.title): an application instance still writes v1"),\n' +
        'and how long it has been quiet; it does not change the exit code (run --quiet-period and report weigh it).\n' +
        'Each verify is recorded (time, verdict, counts) for `pg-rekey report` and `teardown --drop-state`.',
    )
    .action(run((cmd) => verifyCommand(globals(cmd), cmd.opts())));

  program
    .command('discover')
    .description('find v<N>: values outside the configuration: every text-like and json column of every schema; prints a tables: snippet')
    .option('--full', 'read every row (ctid chunks) instead of a sample')
    .option('--rows <n>', 'sampled: at most n rows of each relation (default 5000)')
    .option('--json', 'print the findings as JSON on stdout')
    .addHelpText(
      'after',
      '\nBefore the old key goes, nothing may still need it. discover reads every relation that stores rows\n' +
        '(tables, partitions, INHERITS children, materialized views) in every schema but pgrekey and the system\n' +
        'ones, and looks in each text, varchar, char, citext column (and domains over them) for values in the\n' +
        'exact stored format (v<N>: then padded base64 of at least nonce + MAC; "v1: see ticket" is not one),\n' +
        'and in json/jsonb columns for such strings (reported: pg-rekey cannot rewrite inside JSON).\n' +
        'Sampled by default: about 64 random blocks of each relation (TABLESAMPLE SYSTEM; smaller relations\n' +
        'whole), at most --rows rows, 10 s per relation, so a huge table stays cheap; --full reads every row.\n' +
        'It lists: unconfigured columns holding old-version values, configured columns with their counts,\n' +
        'materialized views whose definition reads a configured column (they keep old ciphertexts until\n' +
        'REFRESH MATERIALIZED VIEW), and what it could not read (schema USAGE, SELECT, row security,\n' +
        'foreign tables, timeouts) as NOT CHECKED. Then a `tables:` snippet for pg-rekey.yaml.\n' +
        'Exit 1 when old-version values are found outside the configured columns, 0 otherwise\n' +
        '(a sample finding none is not proof: run --full before removing the old key).\n' +
        'Run it as a role that may read every table (GRANT pg_read_all_data, plus BYPASSRLS where row security\n' +
        'is on): the least-privilege worker role reads only the configured tables, so the rest is NOT CHECKED.\n' +
        'Needs only LIBSODIUM_ENCRYPTION_KEY_VERSION. Results are kept in pgrekey.check_result (after setup).',
    )
    .action(run((cmd) => discoverCommand(globals(cmd), cmd.opts())));

  program
    .command('report')
    .description('the rotation record for the audit log: keys (fingerprints), operator, timeline, counts, quarantine, checks, verdict')
    .addOption(new Option('--format <format>', 'md, json, or html (one self-contained file to open and print)').choices(['md', 'json', 'html']).default('md'))
    .option('-o, --output <file>', 'write the report to this file (default: stdout)')
    .option('--quiet-period <duration>', 'how long no application may have written an old version for the verdict "the old key may go"', '15m')
    .addHelpText(
      'after',
      '\nReads the state (pgrekey) and runs verify\'s count, and writes: the key versions with their fingerprints\n' +
        '(HMAC-SHA256 keyed by the key over a fixed label, truncated: it identifies a key and reveals nothing of it;\n' +
        'never a key, a stored value or a plaintext), the database role and host producing it, the timeline (setup,\n' +
        'each run with its host and role, pauses with their reasons, slot recreations, convergence, verify and\n' +
        'report runs, the last old-version write, quiet since), counts per table, column and version now and at\n' +
        'the first recorded verify, the quarantine by reason, verify --decrypt and discover results when\n' +
        'recorded, and the verdict with its evidence. Needs only LIBSODIUM_ENCRYPTION_KEY_VERSION; keys present\n' +
        'in the environment are fingerprinted and compared with those the runs recorded.\n' +
        'Records that it was written (time, file, sha256): `teardown --drop-state` requires a report written after\n' +
        'the last verify. Exit 0 when the verdict is "the old key may go", 1 otherwise (written either way).',
    )
    .action(run((cmd) => reportCommand(globals(cmd), cmd.opts())));

  program
    .command('status')
    .description('slot and stream lag, old-version writes of the applications (rollout gate), sweep progress per relation, throttle state, quarantine, recent runs')
    .option('--json', 'print the report as JSON on stdout')
    .option('--watch [seconds]', 'refresh every N seconds (default 2) until Ctrl-C')
    .addHelpText(
      'after',
      '\nReads the state only (pgrekey.* and the catalog); works from any host while `run` runs elsewhere.\n' +
        'What it says about the daemon:\n' +
        "  STARTING      a `run` holds the slot's lease but has not written its first heartbeat yet (its first seconds)\n" +
        '  STALE         its last heartbeat is over a minute old: hung, or cut off from the database\n' +
        '  NOT RUNNING   it did not stop cleanly (killed, crashed, lease lost): start `pg-rekey run` again\n' +
        '  STOPPED       it exited cleanly; the sweep resumes at the next start\n' +
        'A sweep held back by `pg-rekey pause` (paused) or a throttle signal (throttled) shows no rows/s and no\n' +
        "ETA. A backfill or verify that counted after the daemon's last check is named: its count is newer\n" +
        "(the daemon's own is stale until its next check). The overall line: blocks swept against each\n" +
        "relation's size when its pass started (what a table grew by as rows were rewritten is the tail, +N),\n" +
        'ETA, the newest count of old-version values (daemon, backfill or verify, with its age), rows/s now.\n' +
        'Exit codes: 0 the state was read, whatever it says (status never exits 1: gate on `verify` or\n' +
        '`run --exit-when-converged`); 2 no state schema (run `pg-rekey setup` first) or a config error;\n' +
        '3 database unreachable.',
    )
    .action(run((cmd) => statusCommand(globals(cmd), cmd.opts())));

  program
    .command('pause')
    .description('pause the sweep of every running pg-rekey (run or backfill, any host); the stream keeps going')
    .option('--reason <text>', 'shown in status and logs')
    .action(run((cmd) => pauseCommand(globals(cmd), cmd.opts())));

  program
    .command('resume')
    .description('resume a paused sweep')
    .action(run((cmd) => resumeCommand(globals(cmd))));

  program
    .command('set')
    .description('change sweep and throttle settings of running pg-rekey processes without a restart')
    .argument('[assignments...]', 'name=value pairs, e.g. chunk-time=50ms nice-ratio=0.5 max-replica-lag=2s')
    .option('--reset', 'drop the named overrides (all without names): back to config values')
    .option('--json', 'print overrides and effective settings as JSON')
    .addHelpText(
      'after',
      `\nSettings: ${SETTING_NAMES.join(', ')} (the config file's spelling, nice_ratio, works too).\n` +
        'Stored in pgrekey.setting; they win over flags, environment and the config file until reset.\n' +
        'Running sweeps pick them up within throttle.check_interval. Without arguments: show what is in effect.\n' +
        'Examples:\n  pg-rekey set latency-ratio=1.05               # gentler during business hours (mode auto)\n  pg-rekey set max-rate=2000                    # a hard limit, rows/s\n  pg-rekey set mode=duty nice-ratio=8           # the duty cycle instead of the latency target\n  pg-rekey set mode=fast                        # unthrottled at night\n  pg-rekey set --reset                          # back to the config file',
    )
    .action(run((cmd) => setCommand(globals(cmd), cmd.args, cmd.opts())));

  program
    .command('keygen')
    .description('print a new random 32-byte key as 64 hex characters')
    .action(run(() => keygenCommand()));

  return program;
}

export async function main(argv: string[]): Promise<number> {
  let code = 0;
  const program = buildProgram((c) => (code = c));
  try {
    if (argv.length <= 2) {
      program.outputHelp();
      return EXIT_USAGE;
    }
    await program.parseAsync(argv);
    return code;
  } catch (e) {
    if (e instanceof CommanderError) return e.exitCode === 0 ? 0 : EXIT_USAGE;
    process.stderr.write(`${describeError(e)}\n`);
    return exitCodeOf(e);
  }
}

// `pg-rekey --help | head` closes stdout early: that is not an error.
process.stdout.on('error', (e: NodeJS.ErrnoException) => {
  if (e.code === 'EPIPE') process.exit(process.exitCode ?? 0);
  throw e;
});
boundHeapGrowth();
process.exitCode = await main(process.argv);
// The command is done. A socket pg left open (it does after a failed SASL exchange, e.g. no password)
// must not keep the process alive: from a second on, exit as soon as stdout and stderr have handed all
// their output over (a slow reader of a pipe, `grants | psql`, gets all of it; bounded at a minute).
const doneAt = Date.now();
const exitWhenFlushed = (): void => {
  const pending = process.stdout.writableLength + process.stderr.writableLength;
  if (pending === 0 || Date.now() - doneAt > 60_000) process.exit(process.exitCode ?? 0);
  setTimeout(exitWhenFlushed, 100).unref();
};
setTimeout(exitWhenFlushed, 1000).unref();
