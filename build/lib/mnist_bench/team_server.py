"""``python -m mnist_bench.team_server``: a team MLflow tracking server on PostgreSQL, locally.

``start`` creates (once) a PostgreSQL cluster in ``<dir>/postgres``, starts it on a loopback
port, and starts ``mlflow server`` with that database as its backend store and
``<dir>/artifacts`` as the destination of proxied artifacts: clients send and fetch artifacts
through the server and need no access to the folder. ``stop`` stops both. Everything listens
on 127.0.0.1 only; see docs/scaling_out.md for a lab's real deployment.

PostgreSQL refuses to run as root; started by root, the database runs as the user ``nobody``
(``--db-user``), which must be able to reach ``<dir>``.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

DB_NAME = DB_ROLE = "mlflow"
READY_TIMEOUT_S = 120


class ServerError(RuntimeError):
    """Something the team server could not do; the message says what, in one line."""


@dataclass(frozen=True)
class TeamServer:
    folder: Path
    port: int = 5000
    db_port: int = 5432
    db_user: str | None = None  # the system user that runs PostgreSQL; None: this one

    @property
    def pgdata(self) -> Path:
        return self.folder / "postgres"

    @property
    def backend_uri(self) -> str:
        return f"postgresql+psycopg2://{DB_ROLE}@127.0.0.1:{self.db_port}/{DB_NAME}"

    @property
    def tracking_uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid_file(self) -> Path:
        return self.folder / "mlflow_server.pid"


def pg_tool(name: str) -> str:
    """A PostgreSQL program from PATH, else from the usual Debian folder."""
    found = shutil.which(name) or next(iter(sorted(glob.glob(
        f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if not found:
        raise ServerError(f"PostgreSQL's {name} was not found on PATH nor in "
                          "/usr/lib/postgresql/<version>/bin; install PostgreSQL 15 or later")
    return found


def _as_db_user(server: TeamServer, command: list[str], what: str) -> None:
    try:
        subprocess.run(command, check=True, capture_output=True, text=True, timeout=120,
                       user=server.db_user, cwd="/")
    except subprocess.CalledProcessError as err:
        detail = " ".join((err.stderr or err.stdout or "").split())[:300]
        hint = (f" (PostgreSQL runs as user {server.db_user}, who must be able to reach "
                f"{server.folder}: choose a folder under /tmp, or --db-user)"
                if server.db_user and "ermission denied" in detail else "")
        raise ServerError(f"{what} failed: {detail}{hint}") from None


def start_database(server: TeamServer) -> None:
    """Create the cluster and database on first use, and start PostgreSQL on 127.0.0.1."""
    server.folder.mkdir(parents=True, exist_ok=True)
    if server.db_user:
        shutil.chown(server.folder, user=server.db_user)
    if not (server.pgdata / "PG_VERSION").exists():
        # trust on loopback only: local development; a lab sets passwords (docs/scaling_out.md)
        _as_db_user(server, [pg_tool("initdb"), "-D", str(server.pgdata), "-U", DB_ROLE,
                             "--auth=trust", "-E", "UTF8"], "initdb")
    if not _port_free(server.db_port):
        raise ServerError(f"port {server.db_port} is in use on 127.0.0.1 (another database?); "
                          "choose another with --db-port")
    options = (f"-c listen_addresses=127.0.0.1 -p {server.db_port} "
               f"-c unix_socket_directories={server.pgdata}")
    _as_db_user(server, [pg_tool("pg_ctl"), "-D", str(server.pgdata), "-l",
                         str(server.pgdata / "server.log"), "-o", options, "-w", "start"],
                f"starting PostgreSQL on port {server.db_port}")
    _create_database(server)


def _create_database(server: TeamServer) -> None:
    import psycopg2

    connection = psycopg2.connect(host="127.0.0.1", port=server.db_port, user=DB_ROLE,
                                  dbname="postgres")
    try:
        connection.autocommit = True  # CREATE DATABASE cannot run inside a transaction
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DB_NAME,))
            if cursor.fetchone() is None:
                cursor.execute(f"CREATE DATABASE {DB_NAME}")
    finally:
        connection.close()


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _own_server_pid(server: TeamServer) -> int | None:
    """The PID in ``<dir>/mlflow_server.pid`` if that process is still this folder's
    ``mlflow server`` (a PID file outlives its process, and PIDs are reused)."""
    try:
        pid = int(server.pid_file.read_text())
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    return pid if b"server" in command and str(server.folder).encode() in b" ".join(command) \
        else None


def start_mlflow(server: TeamServer) -> subprocess.Popen:
    """``mlflow server`` on 127.0.0.1 in its own session, logging to ``<dir>/mlflow_server.log``;
    returns once it answers ``/health``."""
    if not _port_free(server.port):
        raise ServerError(f"port {server.port} is in use on 127.0.0.1 (another server?); "
                          "choose another with --port")
    artifacts = server.folder / "artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
               server.backend_uri, "--artifacts-destination", str(artifacts), "--host",
               "127.0.0.1", "--port", str(server.port)]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    with open(server.folder / "mlflow_server.log", "ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                   start_new_session=True)
    server.pid_file.write_text(str(process.pid))
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        if process.poll() is not None:
            raise ServerError(f"mlflow server exited with status {process.returncode}; see "
                              f"{server.folder / 'mlflow_server.log'}")
        try:
            with urllib.request.urlopen(f"{server.tracking_uri}/health", timeout=2):
                return process
        except OSError:
            if time.monotonic() > deadline:
                stop(server)
                raise ServerError(f"mlflow server did not answer within {READY_TIMEOUT_S} s; "
                                  f"see {server.folder / 'mlflow_server.log'}") from None
            time.sleep(0.5)


def start(server: TeamServer) -> None:
    start_database(server)
    try:
        start_mlflow(server)
    except BaseException:
        stop(server)
        raise


def stop(server: TeamServer) -> bool:
    """Stop the MLflow server (its whole process group) and PostgreSQL; whether either was
    running."""
    pid = _own_server_pid(server)
    database = (server.pgdata / "postmaster.pid").exists()
    if pid is not None:
        try:
            os.killpg(pid, signal.SIGTERM)
            for _ in range(100):
                os.killpg(pid, 0)
                time.sleep(0.1)
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    server.pid_file.unlink(missing_ok=True)
    if database:
        _as_db_user(server, [pg_tool("pg_ctl"), "-D", str(server.pgdata), "-m", "fast", "-w",
                             "stop"], "stopping PostgreSQL")
    return pid is not None or database


def port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (1-65535)")
    return int(text)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m mnist_bench.team_server",
        description="Start or stop a local team MLflow server: PostgreSQL backend store, "
                    "proxied artifacts, both on 127.0.0.1.")
    parser.add_argument("action", choices=["start", "stop"])
    parser.add_argument("--dir", type=Path, default=Path("team_server"),
                        help="folder of the database, the artifacts and the logs "
                             "(default: ./team_server)")
    parser.add_argument("--port", type=port, default=5000, help="MLflow server port")
    parser.add_argument("--db-port", type=port, default=5432, help="PostgreSQL port")
    parser.add_argument("--db-user", default="nobody" if os.geteuid() == 0 else None,
                        help="system user that runs PostgreSQL (default: you; nobody for root)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    server = TeamServer(args.dir.resolve(), args.port, args.db_port, args.db_user)
    try:
        if args.action == "start":
            start(server)
            print(f"MLflow server at {server.tracking_uri} (PostgreSQL on 127.0.0.1:"
                  f"{server.db_port}, artifacts in {server.folder / 'artifacts'}); use "
                  f"tracking.uri={server.tracking_uri}, stop with: python -m "
                  f"mnist_bench.team_server stop --dir {args.dir}")
        elif stop(server):
            print(f"stopped the team server in {server.folder}")
        else:
            print(f"no team server was running in {server.folder}")
    except (ServerError, OSError) as err:
        print(f"mnist_bench.team_server: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
