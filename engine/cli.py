"""The ``meridian`` command line.

Subcommands:
    meridian --version
    meridian demo [--seconds S] [--regions a,b,c] [--nodes-per-region N]
                  [--clients-per-region N] [--accounts N]
                  [--no-wan | --wan-latency-ms A:B=MS,...] [--dir DIR] [--seed S]
    meridian node --config FILE
    meridian cluster up|down|status [--dir DIR] [--regions a,b,c] [--nodes-per-region N]
                                    [--no-wan | --wan-latency-ms A:B=MS,...]
    meridian shell --nodes HOST:PORT[,...] [--region R]
    meridian crash-demo [--dir DIR] [--kills K] [--batches N] [--seed S]
    meridian bench COMMAND ...      (the same as python -m bench COMMAND ...)
"""

from __future__ import annotations

import argparse
import errno
import logging
import logging.handlers
import os
import sys

from . import __version__

DEFAULT_CLUSTER_DIR = ".meridian-cluster"


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} is not > 0")
    return value


def _accounts(text: str) -> int:
    value = _positive(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"{value} is too few: a transfer needs 2 accounts")
    from .cluster_demo import MAX_ACCOUNTS

    if value > MAX_ACCOUNTS:
        raise argparse.ArgumentTypeError(
            f"{value} is too many: one transaction creates them all, at most {MAX_ACCOUNTS}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"{value} is not in (0, 3600] seconds")
    return value


def _latencies(text: str) -> dict[tuple[str, str], float]:
    """``us-east:eu-west=35,us-east:ap-south=70``: one-way latency per region pair."""
    from .config import MAX_WAN_LATENCY_MS

    out: dict[tuple[str, str], float] = {}
    for item in (x.strip() for x in text.split(",") if x.strip()):
        pair, sep, ms = item.partition("=")
        a, colon, b = pair.partition(":")
        try:
            value = float(ms)
        except ValueError:
            value = -1.0
        if not sep or not colon or not a or not b or not 0 <= value <= MAX_WAN_LATENCY_MS:
            raise argparse.ArgumentTypeError(
                f"{item!r}: expected REGION:REGION=MILLISECONDS (0..{MAX_WAN_LATENCY_MS}), "
                f"e.g. us-east:eu-west=35")
        a, b = a.strip(), b.strip()
        if (a, b) in out or (b, a) in out:
            raise argparse.ArgumentTypeError(f"{item!r}: the pair {a}:{b} is given twice")
        out[(a, b)] = value
    return out


def _regions(text: str) -> tuple[str, ...]:
    names = tuple(r.strip() for r in text.split(",") if r.strip())
    if not names:
        raise argparse.ArgumentTypeError("give at least one region name")
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meridian",
        description="Meridian: a globally distributed transactional key-value database.",
    )
    parser.add_argument("--version", action="version", version=f"meridian {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser(
        "demo",
        help="start a local three-region cluster, run a workload from every region, report, "
             "shut down",
        description="Starts a local multi-process cluster (three regions x three nodes, "
                    "simulated WAN latency), runs bank transfers and stale reads from every "
                    "region with progress on screen, prints throughput, latency percentiles "
                    "per region, conflicts and learner lag, and stops every process it started.",
    )
    demo.add_argument("--seconds", type=_seconds, default=10.0, help="workload duration (10)")
    demo.add_argument("--regions", type=_regions, default=("us-east", "eu-west", "ap-south"),
                      help="comma-separated region names (us-east,eu-west,ap-south)")
    demo.add_argument("--nodes-per-region", type=_positive, default=3, help="(3)")
    demo.add_argument("--clients-per-region", type=_positive, default=4, help="(4)")
    demo.add_argument("--accounts", type=_accounts, default=50,
                      help="accounts per bank, 2 to 1000 (50)")
    wan = demo.add_mutually_exclusive_group()
    wan.add_argument("--no-wan", action="store_true", help="no simulated WAN latency")
    wan.add_argument("--wan-latency-ms", type=_latencies, metavar="A:B=MS,...",
                     help="one-way latency per region pair (default 35/70/110 ms)")
    demo.add_argument("--dir", help="cluster directory (default: a temporary one, removed)")
    demo.add_argument("--seed", type=int, default=1, help="workload seed (1)")

    node = sub.add_parser("node", help="run one node (see engine/config.py for the file)")
    node.add_argument("--config", required=True, help="the node's TOML configuration file")

    cluster = sub.add_parser(
        "cluster", help="a local multi-process cluster: up, down, status",
        description="up starts the cluster's node processes and waits for every group to have "
                    "a leader; down stops them; status shows every node's groups, and exits "
                    "with status 1 when a node does not answer or does not serve.")
    cluster.add_argument("action", choices=("up", "down", "status"))
    cluster.add_argument("--dir", default=DEFAULT_CLUSTER_DIR,
                         help=f"cluster directory (default {DEFAULT_CLUSTER_DIR})")
    cluster.add_argument("--regions", type=_regions,
                         help="a new cluster's regions (default us-east,eu-west,ap-south)")
    cluster.add_argument("--nodes-per-region", type=_positive,
                         help="a new cluster's nodes per region (default 3)")
    wan = cluster.add_mutually_exclusive_group()
    wan.add_argument("--no-wan", action="store_true", help="no simulated WAN latency")
    wan.add_argument("--wan-latency-ms", type=_latencies, metavar="A:B=MS,...",
                     help="one-way latency per region pair (default 35/70/110 ms between the "
                          "first three regions); pairs not given have none")

    shell = sub.add_parser("shell", help="an interactive prompt connected to a cluster")
    shell.add_argument("--nodes", help="comma-separated client addresses host:port "
                                       f"(default: the cluster in {DEFAULT_CLUSTER_DIR})")
    shell.add_argument("--region", help="the client's region (default: the first node's)")

    crash = sub.add_parser(
        "crash-demo",
        help="the storage core under SIGKILL: write, crash a writer, recover, verify",
        description=(
            "Writes records and versions through Meridian's storage core in a child process, "
            "kills it with SIGKILL at random moments, reopens the stores and checks that every "
            "acknowledged write survived byte for byte."
        ),
    )
    crash.add_argument("--dir", help="data directory (default: a temporary one, removed after)")
    crash.add_argument("--kills", type=_positive, default=3, help="writer crashes (default 3)")
    crash.add_argument(
        "--batches", type=_positive, default=200,
        help="synced batches the writer acknowledges before each crash at most (default 200)",
    )
    crash.add_argument("--seed", type=int, default=1, help="seed of the crash moments")

    bench = sub.add_parser(
        "bench", add_help=False,
        help="the benchmark harness: the same as python -m bench (ycsb, scale, compare, ...)")
    bench.add_argument("args", nargs=argparse.REMAINDER)

    # Internal (crash-demo's child process): without a ``help``, argparse leaves it out of
    # the command list (``help=argparse.SUPPRESS`` would print "==SUPPRESS==" there).
    writer = sub.add_parser("demo-writer")
    writer.add_argument("dir")
    return parser


def _run_node(path: str) -> int:
    import signal

    import trio

    from .config import ConfigError, load_node_config
    from .errors import MeridianError
    from .node import run_node

    try:
        cfg = load_node_config(path)
    except ConfigError as exc:
        print(f"meridian node: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"meridian node: cannot read {path}: {exc.strerror}", file=sys.stderr)
        return 2
    handlers = None
    if cfg.log_path is not None:
        try:
            handlers = [node_log_handler(cfg.log_path, cfg.log_max_bytes, cfg.log_backups)]
        except OSError as exc:
            print(f"meridian node: {path}: log_file: cannot open {cfg.log_path}: "
                  f"{exc.strerror or exc}", file=sys.stderr)
            return 2
    logging.basicConfig(level=cfg.log_level.upper(), handlers=handlers,
                        format=f"%(asctime)s node-{cfg.node_id} %(levelname)s %(name)s: "
                               f"%(message)s")
    log = logging.getLogger("meridian.node")

    async def main():
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            node_scope = trio.CancelScope()

            async def watch_signals():
                # Takes every signal for as long as the node runs, not just the first: one
                # still pending when the receiver closes is delivered again with its default
                # action (a KeyboardInterrupt traceback, or death by SIGTERM) -- a second
                # SIGTERM or a Ctrl-C during the shutdown must not turn a clean stop into one.
                async for signum in signals:
                    name = signal.Signals(signum).name
                    if node_scope.cancel_called:
                        log.info("%s: already shutting down", name)
                    else:
                        log.info("%s: shutting down", name)
                        node_scope.cancel()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch_signals)
                with node_scope:
                    await run_node(cfg)
                nursery.cancel_scope.cancel()

    def report(exc: BaseException) -> None:
        if isinstance(exc, MeridianError):
            said = str(exc)
        else:  # most often a port taken, or a host that is not local
            me = cfg.address
            said = (f"node {cfg.node_id} failed: {exc.strerror or exc} (its peer_address is "
                    f"{me.peer_address}, its client_address {me.client_address})")
        if handlers:  # the log file, where its reader looks, says why the node stopped too
            log.error("%s", said)
        print(f"meridian node: {said}", file=sys.stderr)

    try:
        trio.run(main)
    except (MeridianError, OSError) as exc:
        report(exc)
        return 1
    except BaseExceptionGroup as group:
        # Several of the node's tasks failed at once: a disk that fails, or fills, fails
        # every group that writes to it in the same moment. Each failure is one line.
        failures = _leaves(group)
        if not all(isinstance(exc, (MeridianError, OSError)) for exc in failures):
            raise
        for exc in failures:
            report(exc)
        return 1
    log.info("stopped")
    return 0


class _RotatingFileHandler(logging.handlers.RotatingFileHandler):
    """A RotatingFileHandler that bounds its file with no backups too: the standard one never
    rotates when ``backupCount`` is 0, and its file grows without end; this one empties it."""

    def doRollover(self) -> None:
        if self.backupCount > 0:
            super().doRollover()
            return
        if self.stream:
            self.stream.close()
            self.stream = None
        mode, self.mode = self.mode, "w"
        try:
            self.stream = self._open()
        finally:
            self.mode = mode


def node_log_handler(path: str, max_bytes: int, backups: int) -> logging.Handler:
    """The handler of a node's ``log_file``: ``path``, rotated once it would grow past
    ``max_bytes``, with ``backups`` earlier files kept (``path.1`` the newest). The file's
    directory is created if need be, and the file opened at once, so that a path the node
    cannot write to is said when it starts, not at its first log record.

    Raises:
        OSError: the directory cannot be created, or the file opened for appending.
    """
    directory = os.path.dirname(path)
    if directory and not os.path.isdir(directory):
        try:
            os.makedirs(directory, exist_ok=True)
        except FileExistsError:  # what makedirs says of a file where a directory should be
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR),
                                     directory) from None
    return _RotatingFileHandler(path, maxBytes=max_bytes, backupCount=backups,
                                encoding="utf-8")


def _leaves(group: BaseExceptionGroup) -> list[BaseException]:
    """The exceptions of ``group`` and of the groups nested in it, in order."""
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


def _cluster(args) -> int:
    from .errors import MeridianError
    from .procs import (ClusterProcesses, cluster_status, cluster_up, format_status,
                        not_stopped_message, wait_ready)

    try:
        if args.action == "up":
            wan: dict = {}  # neither option: the default latencies, or the existing cluster's
            if args.no_wan or args.wan_latency_ms is not None:
                wan["wan_latency_ms"] = {} if args.no_wan else args.wan_latency_ms
            procs = cluster_up(args.dir, regions=args.regions,
                               nodes_per_region=args.nodes_per_region, **wan)
            cluster = procs.load_cluster()
            from functools import partial

            import trio

            trio.run(partial(wait_ready, cluster, procs=procs))
            addrs = ",".join(f"{n.client_host}:{n.client_port}" for n in cluster.all_nodes())
            print(f"cluster up in {args.dir}: {len(cluster.all_nodes())} nodes; clients: {addrs}")
            return 0
        if args.action == "down":
            procs = ClusterProcesses(args.dir)
            stopped = procs.stop()
            print(f"stopped {len(stopped)} node processes" if stopped else "nothing running")
            if left := [n for n in stopped if procs.running_pid(n) is not None]:
                print(f"meridian cluster down: {not_stopped_message(left)}", file=sys.stderr)
                return 1
            return 0
        procs = ClusterProcesses(args.dir)
        status = cluster_status(args.dir)
        print(format_status(procs.load_cluster(), status))
        # For a script or a health check: a node that did not answer, or answers but refuses
        # every read and write (its clock is not trusted), is a cluster not whole.
        return 1 if any("error" in s or s.get("clock_problem") for s in status.values()) else 0
    except MeridianError as exc:
        print(f"meridian cluster {args.action}: {exc}{_left_running(args)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"meridian cluster {args.action}: interrupted{_left_running(args)}",
              file=sys.stderr)
        return 130


def _left_running(args) -> str:
    """For a failed or interrupted ``cluster up``: what it leaves running, and how to stop it
    (the nodes that did start are kept, with their logs, to see what went wrong)."""
    from .procs import ClusterProcesses

    if args.action != "up":
        return ""
    procs = ClusterProcesses(args.dir)
    try:
        running = procs.running_here()
    except OSError:
        return ""
    if not running:
        return ""
    what = "1 node process it started keeps" if len(running) == 1 else \
        f"{len(running)} node processes it started keep"
    return f"; {what} running (logs in {args.dir}; meridian cluster down --dir {args.dir})"


def _shell(args) -> int:
    from .errors import MeridianError

    nodes = [n.strip() for n in (args.nodes or "").split(",") if n.strip()]
    if not nodes:
        from .procs import ClusterProcesses

        procs = ClusterProcesses(DEFAULT_CLUSTER_DIR)
        try:
            cluster = procs.load_cluster()
        except MeridianError as exc:
            print(f"meridian shell: give --nodes ({exc})", file=sys.stderr)
            return 2
        if not any(procs.running_pid(n.id) is not None for n in cluster.all_nodes()):
            # Said at once: connecting would retry for the whole request timeout first.
            print(f"meridian shell: no node of the cluster in {DEFAULT_CLUSTER_DIR} is running "
                  f"(start it with: meridian cluster up; or give --nodes)", file=sys.stderr)
            return 1
        nodes = [f"{n.client_host}:{n.client_port}" for n in cluster.all_nodes()]
    from .shell import run_shell

    if sys.stdin is None or sys.stdout is None:  # started with it closed (<&- or >&-)
        print("meridian shell: its standard input and output must be open", file=sys.stderr)
        return 2
    try:
        return run_shell(nodes, args.region, stdin=sys.stdin, stdout=sys.stdout)
    except MeridianError as exc:
        print(f"meridian shell: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # What read the output went away (`meridian shell < script | head`): stop quietly, as
        # other commands do, and leave the interpreter nowhere to flush the rest to.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        # Ctrl-C outside the prompt (while connecting, or closing): one line, and the
        # conventional status of a process ended by SIGINT, rather than a traceback.
        print("meridian shell: interrupted", file=sys.stderr)
        return 130


def _bench(argv: list[str]) -> int:
    try:
        from bench.__main__ import main as bench_main
    except ImportError as exc:
        print(f"meridian bench: the benchmark harness is not installed ({exc})", file=sys.stderr)
        return 2
    return bench_main(argv, prog="meridian bench")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        # Everything after ``bench`` belongs to the harness (its own --help included).
        return _bench(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return _dispatch(parser, args)
    except BrokenPipeError:
        # What read the output went away (`meridian cluster status | head -1`): stop quietly,
        # as the shell does, and leave the interpreter nowhere to flush the rest to.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as exc:
        # The environment refused something (a --dir that is a file, a directory that cannot
        # be written): one line naming it, like every other error of the command line -- and,
        # for a `cluster up` that had started some nodes, which of them it leaves running.
        where = f": {exc.filename}" if exc.filename is not None else ""
        left = _left_running(args) if args.command == "cluster" else ""
        print(f"meridian {args.command}: {exc.strerror or exc}{where}{left}", file=sys.stderr)
        return 1


def _dispatch(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if args.command == "demo":
        from .cluster_demo import run_demo

        return run_demo(directory=args.dir, seconds=args.seconds, regions=args.regions,
                        nodes_per_region=args.nodes_per_region,
                        clients_per_region=args.clients_per_region, accounts=args.accounts,
                        wan=not args.no_wan, wan_latency_ms=args.wan_latency_ms,
                        seed=args.seed)
    if args.command == "node":
        try:
            return _run_node(args.config)
        except KeyboardInterrupt:
            # Ctrl-C before the node takes SIGINT over (while it reads its configuration or
            # starts): nothing is open yet. One line and the status of a SIGINT, as the shell.
            print("meridian node: interrupted", file=sys.stderr)
            return 130
    if args.command == "cluster":
        return _cluster(args)
    if args.command == "shell":
        return _shell(args)
    if args.command == "crash-demo":
        from .demo import run_demo

        return run_demo(directory=args.dir, kills=args.kills, batches=args.batches, seed=args.seed)
    if args.command == "bench":
        return _bench(args.args)
    if args.command == "demo-writer":
        from .demo import run_writer

        return run_writer(args.dir)
    parser.error(f"unknown command {args.command}")  # pragma: no cover
    return 2


if __name__ == "__main__":
    sys.exit(main())
