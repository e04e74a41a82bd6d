"""The loopback cluster: the production shape of a gateway over a ledger split by region.

    python scripts/cluster/loopback.py up       # `make cluster`: start everything, print where
    python scripts/cluster/loopback.py status   # members, roles, endpoints (JSON)
    python scripts/cluster/loopback.py primary  # the Patroni member that is the primary now
    python scripts/cluster/loopback.py kill pg1 # kill -9 a member (Patroni and its PostgreSQL),
                                                # a plain ledger server (pg-bijie, pg-wenzhou),
                                                # a gateway node (gw1, gw2) or a Redis
                                                # (redis-master, redis-replica): failover drills
    python scripts/cluster/loopback.py start pg1  # bring a killed member, server, node or Redis back
    python scripts/cluster/loopback.py down     # `make cluster-down`: stop all, remove the data

What `up` starts, each on a free port of 127.0.0.1, with its data and logs under one temporary
directory: etcd; three Patroni members over PostgreSQL 15 (synchronous_mode_strict), the ledger
cluster of region 441800 (清远); two plain PostgreSQL servers, the ledger clusters of 520500
(毕节) and 330300 (温州); a plain PostgreSQL server for the main database (reference data, plan,
person directory); HAProxy with a read-write listener checked on Patroni's /primary and a gateway
listener checked on /readyz; Redis, its replica and a Sentinel; the demo data set loaded once; two
gateway nodes whose main database is the plain server, whose [[ledger_clusters]] are the three
clusters (441800's through HAProxy's read-write listener), and whose Redis is the master
Sentinel names.

Servers run as the `postgres` user when this runs as root (PostgreSQL refuses root; the others
need no privilege either); gateway nodes run as the caller. The servers are started as that user
directly (subprocess's user=), not under `runuser`, which stays behind as the parent: the pid
recorded must be the server's own, so that `kill` and `down` reach it.

Everything started is written to the state file (var/cluster/state.json unless --state) as it
starts, so `down` also cleans up after an `up` that failed half-way. Configuration templates:
config/cluster/. Standard library only, but for asyncpg (creating the ledger database).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import json
import os
import pwd
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = ROOT / "config" / "cluster"
DEFAULT_STATE = ROOT / "var" / "cluster" / "state.json"
PG_BIN = Path("/usr/lib/postgresql/15/bin")
SCOPE = "ledger-a"  # the Patroni cluster of the one region group run here
MASTER_NAME = "gateway"  # the Redis master's name in Sentinel
MEMBERS = ("pg1", "pg2", "pg3")
# Plain PostgreSQL servers: the main database, and a ledger cluster each for two region groups.
MAIN_SERVER = "pg-main"
PLAIN_CLUSTERS = {"pg-bijie": ("bijie", ("520500",)), "pg-wenzhou": ("wenzhou", ("330300",))}
PLAIN = (MAIN_SERVER, *PLAIN_CLUSTERS)
PATRONI_CLUSTER = ("qingyuan", ("441800",))  # the Patroni cluster's name and regions
GATEWAYS = ("gw1", "gw2")
REDISES = ("redis-master", "redis-replica")
DATABASE = "gateway"
TOOLS = {
    "etcd": "etcd-server",
    "patroni": "patroni",
    "haproxy": "haproxy",
    "redis-server": "redis-server",
    "redis-sentinel": "redis-sentinel",
}


class ClusterError(RuntimeError):
    """The cluster could not be started or reached; the message says what and where the log is."""


# ------------------------------------------------------------------------------- helpers


def missing_tools() -> list[str]:
    """The Debian packages still to install for `up` (scripts/system-deps.sh installs them)."""
    lacking = [pkg for tool, pkg in TOOLS.items() if shutil.which(tool) is None]
    if not (PG_BIN / "postgres").exists():
        lacking.append("postgresql-15")
    return lacking


def free_ports(n: int) -> list[int]:
    """n distinct free ports, all held open while choosing so none is chosen twice."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def render(template: str, target: Path, **values: Any) -> Path:
    text = string.Template((TEMPLATES / template).read_text(encoding="utf-8"))
    target.write_text(text.substitute({k: str(v) for k, v in values.items()}), encoding="utf-8")
    return target


def http_get(url: str, timeout: float = 1.0) -> tuple[int, bytes]:
    """Status and body; 0 when nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()
    except (OSError, ValueError):
        return 0, b""


def wait_for(what: str, check: Any, within: float, log: Path | None = None) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.25)
    hint = f" (see {log.name} in the kept logs)" if log else ""
    raise ClusterError(f"{what} not ready within {within:.0f} s{hint}")


def _server_user() -> pwd.struct_passwd | None:
    """The postgres user when running as root; None: run as ourselves."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        raise ClusterError("running as root but there is no postgres user") from None


def _own(path: Path) -> None:
    user = _server_user()
    if user is not None:
        os.chown(path, user.pw_uid, user.pw_gid)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # pid (comm) state ppid ...: comm may hold spaces, so split after its ")".
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (our own child not yet reaped) is dead for every purpose here.
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# --------------------------------------------------------------------------------- state


class Cluster:
    """The state file's contents, and what can be done with them."""

    def __init__(self, state_path: Path, data: dict[str, Any]) -> None:
        self.state_path = state_path
        self.data = data

    @classmethod
    def load(cls, state_path: Path) -> Cluster:
        if not state_path.exists():
            raise ClusterError(f"no cluster state at {state_path} (is the cluster up?)")
        return cls(state_path, json.loads(state_path.read_text(encoding="utf-8")))

    def save(self) -> None:
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        self.state_path.write_text(json.dumps(self.data, indent=2), encoding="utf-8")

    @property
    def base(self) -> Path:
        return Path(self.data["base"])

    @property
    def ports(self) -> dict[str, int]:
        ports: dict[str, int] = self.data["ports"]
        return ports

    # --------------------------------------------------------------------- processes

    def spawn(
        self,
        name: str,
        argv: list[str],
        *,
        as_server: bool,
        mark: str,
        environment: dict[str, str] | None = None,
    ) -> int:
        """Start one process in a session of its own, output to log/<name>.log; its pid and
        a mark (a string its command line must hold, so a reused pid is never killed) are
        saved at once."""
        log = self.base / "log" / f"{name}.log"
        user = _server_user() if as_server else None
        extra: dict[str, Any] = {}
        env = {**os.environ, **(environment or {})}
        if user is not None:
            extra = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
            env.update(HOME=user.pw_dir, USER=user.pw_name, LOGNAME=user.pw_name)
        with log.open("ab") as out:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=self.base if as_server else ROOT,
                env=env,
                **extra,
            )
        self.data["processes"][name] = {"pid": proc.pid, "mark": mark, "log": str(log)}
        self.save()
        return proc.pid

    def pid(self, name: str) -> int | None:
        """The process's pid while it runs (and is still ours)."""
        entry = self.data["processes"].get(name)
        if entry is None:
            return None
        pid = int(entry["pid"])
        if _alive(pid) and entry["mark"] in _cmdline(pid):
            return pid
        return None

    def postmaster(self, member: str) -> int | None:
        """The pid of the member's PostgreSQL, from its postmaster.pid, while it runs."""
        pidfile = self.base / "pg" / member / "postmaster.pid"
        try:
            pid = int(pidfile.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if _alive(pid) and str(self.base) in _cmdline(pid) else None

    def kill(self, name: str) -> list[int]:
        """kill -9: a gateway node, or a Patroni member with its PostgreSQL and every backend
        (a machine dying, not a clean stop). Returns the pids killed."""
        pids = []
        pid = self.pid(name)
        if pid is not None:
            pids.append(pid)
        if name in MEMBERS:
            master = self.postmaster(name)
            if master is not None:
                pids += [master, *_children(master)]
        elif name in PLAIN and pid is not None:
            pids += _children(pid)  # the backends die with their server
        for p in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
        # Dead before this returns: a server started again at once on the same data directory
        # would otherwise find the old postmaster.pid's process still there and refuse to start.
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        return pids

    def stop(self, name: str, grace: float = 15.0) -> None:
        """SIGTERM, then SIGKILL past the grace period."""
        pid = self.pid(name)
        if pid is None:
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)

    # ------------------------------------------------------------------- components

    def patroni_url(self, member: str, path: str) -> str:
        return f"http://127.0.0.1:{self.ports[f'{member}_api']}{path}"

    def members(self) -> list[dict[str, Any]]:
        """Patroni's view of the cluster (name, role, state, lag), from any member answering."""
        for member in MEMBERS:
            status, body = http_get(self.patroni_url(member, "/cluster"))
            if status == 200:
                found: list[dict[str, Any]] = json.loads(body).get("members", [])
                return found
        return []

    def primary(self) -> str | None:
        """The member answering /primary with 200 (what HAProxy routes writes to)."""
        for member in MEMBERS:
            if http_get(self.patroni_url(member, "/primary"))[0] == 200:
                return member
        return None

    def haproxy_servers(self, listener: str) -> dict[str, dict[str, str]]:
        """Each server's row of HAProxy's statistics in one listener or backend (status: UP,
        DOWN, ...; stot: sessions so far)."""
        status, body = http_get(f"http://127.0.0.1:{self.ports['haproxy_stats']}/;csv")
        if status != 200:
            return {}
        rows = csv.DictReader(body.decode().lstrip("# ").splitlines())
        return {
            r["svname"]: r
            for r in rows
            if r["pxname"] == listener and r["svname"] not in ("FRONTEND", "BACKEND")
        }

    def haproxy_states(self, listener: str) -> dict[str, str]:
        """Each server's status in one listener or backend (UP, DOWN, ...)."""
        return {name: row["status"] for name, row in self.haproxy_servers(listener).items()}

    def _redis_master_now(self) -> int | None:
        """`redis_master_port`, None when Sentinel does not answer (status must not fail)."""
        try:
            return self.redis_master_port()
        except (OSError, ValueError, IndexError):
            return None

    def redis_master_port(self) -> int | None:
        """The port of the Redis that Sentinel names master now."""
        with socket.create_connection(("127.0.0.1", self.ports["sentinel"]), timeout=2) as s:
            s.sendall(f"SENTINEL get-master-addr-by-name {MASTER_NAME}\r\n".encode())
            reply = s.recv(4096).decode().split("\r\n")
        # *2, $9, 127.0.0.1, $5, <port>: a two-element array of bulk strings
        return int(reply[4]) if reply[0] == "*2" else None

    def sentinel_replicas(self) -> dict[int, str]:
        """The replicas Sentinel knows of the master, by port, with their flags. Sentinel finds
        them from the master's INFO, every 10 s: a master that dies before its replica is known
        is not failed over (no replica to promote) until the failover timeout has passed twice."""
        with socket.create_connection(("127.0.0.1", self.ports["sentinel"]), timeout=2) as s:
            s.sendall(f"SENTINEL replicas {MASTER_NAME}\r\n".encode())
            data = b""
            s.settimeout(0.3)
            with contextlib.suppress(TimeoutError):
                while chunk := s.recv(65536):
                    data += chunk
        # An array of replicas, each an array of alternating field names and values (bulk strings).
        lines = data.decode(errors="replace").split("\r\n")
        values = [lines[i + 1] for i, line in enumerate(lines[:-1]) if line.startswith("$")]
        found: dict[int, str] = {}
        fields: dict[str, str] = {}
        for name, value in zip(values[::2], values[1::2], strict=False):
            fields[name] = value
            if "port" in fields and "flags" in fields:
                found[int(fields["port"])] = fields["flags"]
                fields = {}
        return found

    def start_member(self, member: str) -> None:
        config = self.base / f"{member}.yml"
        self.spawn(member, ["patroni", str(config)], as_server=True, mark=str(config))

    def start_plain(self, server: str) -> None:
        """A plain PostgreSQL server (no Patroni), initialised on its first start."""
        data = self.base / "pg" / server
        if not data.exists():
            user = _server_user()
            subprocess.run(
                [str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                 "-E", "UTF8", "--no-sync"],
                check=True, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                user=user.pw_uid if user else None, group=user.pw_gid if user else None,
                extra_groups=[] if user else None,
            )  # fmt: skip
        # A server killed with -9 leaves its postmaster.pid; while its process is a zombie not
        # yet reaped (its parent, `up`, is gone), PostgreSQL takes it for a live server.
        # So does its socket's lock file.
        socket_lock = self.base / "sock" / f".s.PGSQL.{self.ports[server]}.lock"
        for stale in (data / "postmaster.pid", socket_lock):
            with contextlib.suppress(OSError, ValueError, IndexError):
                if not _alive(int(stale.read_text().split()[0])):
                    stale.unlink()
        argv = [
            str(PG_BIN / "postgres"), "-D", str(data), "-p", str(self.ports[server]),
            "-k", str(self.base / "sock"), "-c", "listen_addresses=127.0.0.1",
        ]  # fmt: skip
        self.spawn(server, argv, as_server=True, mark=str(data))

    def start_gateway(self, node: str) -> None:
        port = self.ports[node]
        config = self.base / "gateway-node.toml"
        argv = [
            sys.executable, "-m", "gateway", "serve", "--host", "127.0.0.1", "--port", str(port),
            "--database-url", self.data["main_dsn"], "--config", str(config),
        ]  # fmt: skip
        # The national interface's times are Beijing time, whatever the shell's zone (found
        # from outside: the nodes started in UTC and dated settlements 8 hours back).
        self.spawn(
            node, argv, as_server=False, mark=str(config), environment={"TZ": "Asia/Shanghai"}
        )

    def start_redis(self, name: str) -> None:
        """Redis's master or replica, again from the file `up` wrote (Sentinel makes a server
        that comes back a replica of whichever is master now)."""
        port = self.ports["redis_master" if name == "redis-master" else "redis_replica"]
        conf = self.base / name / "redis.conf"
        self.spawn(name, ["redis-server", str(conf)], as_server=True, mark=f":{port}")

    def gateway_ready(self, node: str) -> bool:
        return http_get(f"http://127.0.0.1:{self.ports[node]}/readyz")[0] == 200

    def summary(self) -> dict[str, Any]:
        ports = self.ports
        return {
            "base": str(self.base),
            "state": str(self.state_path),
            "main_dsn": self.data["main_dsn"],
            "clusters": self.data["clusters"],
            "dsn": self.data["dsn"],
            "multi_host_dsn": self.data["multi_host_dsn"],
            "gateway": f"http://127.0.0.1:{ports['haproxy_gateway']}",
            "gateway_nodes": {n: f"http://127.0.0.1:{ports[n]}" for n in GATEWAYS},
            "haproxy_stats": f"http://127.0.0.1:{ports['haproxy_stats']}/",
            "etcd": f"http://127.0.0.1:{ports['etcd_client']}",
            "patroni": {m: self.patroni_url(m, "") for m in MEMBERS},
            "patronictl": f"patronictl -c {self.base / 'pg1.yml'} list",
            "sentinel": f"127.0.0.1:{ports['sentinel']}",
            # As started; which one is the master now is Sentinel's to say (found in a drill:
            # after the master was killed, `status` still named it).
            "redis": {"master": ports["redis_master"], "replica": ports["redis_replica"]},
            "redis_master_now": self._redis_master_now(),
            "primary": self.primary(),
            "members": self.members(),
            "processes": {n: self.pid(n) for n in self.data["processes"]},
        }


# ------------------------------------------------------------------------------------ up

PORT_NAMES = (
    "etcd_client", "etcd_peer",
    *(f"{m}_{kind}" for m in MEMBERS for kind in ("pg", "api")),
    *PLAIN,
    "haproxy_rw", "haproxy_gateway", "haproxy_stats",
    "redis_master", "redis_replica", "sentinel",
    *GATEWAYS,
)  # fmt: skip


def up(state_path: Path, node_settings: Path | None) -> Cluster:
    lacking = missing_tools()
    if lacking:
        raise ClusterError(
            f"missing system packages: {' '.join(lacking)} (install: make system-deps)"
        )
    if state_path.exists():
        old = Cluster.load(state_path)
        if any(old.pid(n) for n in old.data["processes"]):
            raise ClusterError(f"a cluster is already up ({state_path}); make cluster-down first")
        down(state_path)
    base = Path(tempfile.mkdtemp(prefix="sgw-cluster-"))
    base.chmod(0o755)  # the servers' user must reach its directories under it
    ports = dict(zip(PORT_NAMES, free_ports(len(PORT_NAMES)), strict=True))
    rw = ports["haproxy_rw"]
    hosts = ",".join(f"127.0.0.1:{ports[f'{m}_pg']}" for m in MEMBERS)
    cluster = Cluster(
        state_path,
        {
            "base": str(base),
            "ports": ports,
            "processes": {},
            # The Patroni cluster's ledger (region 441800), through HAProxy's read-write listener.
            "dsn": f"postgresql://postgres@127.0.0.1:{rw}/{DATABASE}",
            "multi_host_dsn": f"postgresql://postgres@{hosts}/{DATABASE}"
            "?target_session_attrs=read-write",
            # The main database (what the gateway nodes' --database-url names).
            "main_dsn": f"postgresql://postgres@127.0.0.1:{ports[MAIN_SERVER]}/{DATABASE}",
            # Every ledger cluster by name: its DSN and regions.
            "clusters": {
                PATRONI_CLUSTER[0]: {
                    "dsn": f"postgresql://postgres@127.0.0.1:{rw}/{DATABASE}",
                    "regions": list(PATRONI_CLUSTER[1]),
                },
                **{
                    name: {
                        "dsn": f"postgresql://postgres@127.0.0.1:{ports[server]}/{DATABASE}",
                        "regions": list(regions),
                    }
                    for server, (name, regions) in PLAIN_CLUSTERS.items()
                },
            },
        },
    )
    cluster.save()
    try:
        _start_all(cluster, node_settings)
    except BaseException:
        # The logs outlive the failed start (down removes the data directory).
        kept = state_path.parent / "failed-logs"
        shutil.rmtree(kept, ignore_errors=True)
        shutil.copytree(base / "log", kept, dirs_exist_ok=True)
        down(state_path)
        raise
    return cluster


def _start_all(cluster: Cluster, node_settings: Path | None) -> None:
    base, ports = cluster.base, cluster.ports
    for sub in ("log", "etcd", "pg", "sock", "redis-master", "redis-replica", "sentinel"):
        (base / sub).mkdir()
        _own(base / sub)
    (base / "journal").mkdir()
    _own(base / "log")

    # etcd: Patroni's distributed configuration store (one member on loopback).
    client, peer = ports["etcd_client"], ports["etcd_peer"]
    argv = [
        "etcd", "--name", "e1", "--data-dir", str(base / "etcd" / "e1"),
        "--listen-client-urls", f"http://127.0.0.1:{client}",
        "--advertise-client-urls", f"http://127.0.0.1:{client}",
        "--listen-peer-urls", f"http://127.0.0.1:{peer}",
        "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
        "--initial-cluster", f"e1=http://127.0.0.1:{peer}",
        "--log-level", "warn",
    ]  # fmt: skip
    cluster.spawn("etcd", argv, as_server=True, mark=str(base / "etcd"))
    wait_for(
        "etcd",
        lambda: http_get(f"http://127.0.0.1:{client}/health")[0] == 200,
        30,
        base / "log" / "etcd.log",
    )

    # The Patroni members: the first to take the leader key runs initdb, the others clone it.
    for member in MEMBERS:
        render(
            "patroni.yml",
            base / f"{member}.yml",
            scope=SCOPE,
            name=member,
            api_port=ports[f"{member}_api"],
            pg_port=ports[f"{member}_pg"],
            etcd_port=client,
            data_dir=base / "pg" / member,
            base=base,
        )
        _own(base / f"{member}.yml")
        cluster.start_member(member)

    def replicated() -> bool:
        for member in MEMBERS:
            if cluster.pid(member) is None:
                raise ClusterError(
                    f"Patroni member {member} exited (see {member}.log in the kept logs)"
                )
        members = cluster.members()
        roles = sorted(m.get("role", "") for m in members)
        running = all(m.get("state") in ("running", "streaming") for m in members)
        return len(members) == 3 and running and roles.count("sync_standby") >= 1

    # The plain servers start while Patroni elects and clones.
    for server in PLAIN:
        cluster.start_plain(server)

    wait_for(
        "the Patroni cluster (a primary and a synchronous standby)", replicated, 180, base / "log"
    )

    pg_servers = "\n".join(
        f"    server {m} 127.0.0.1:{ports[f'{m}_pg']} check port {ports[f'{m}_api']}"
        for m in MEMBERS
    )
    gateway_servers = "\n".join(f"    server {n} 127.0.0.1:{ports[n]} check" for n in GATEWAYS)
    render(
        "haproxy.cfg",
        base / "haproxy.cfg",
        rw_port=ports["haproxy_rw"],
        gateway_port=ports["haproxy_gateway"],
        stats_port=ports["haproxy_stats"],
        pg_servers=pg_servers,
        gateway_servers=gateway_servers,
    )
    _own(base / "haproxy.cfg")
    config = base / "haproxy.cfg"
    cluster.spawn(
        "haproxy", ["haproxy", "-db", "-f", str(config)], as_server=True, mark=str(config)
    )

    # Redis, its replica and a Sentinel naming the master.
    for name, port in (
        ("redis-master", ports["redis_master"]),
        ("redis-replica", ports["redis_replica"]),
    ):
        conf = render("redis.conf", base / name / "redis.conf", port=port, dir=base / name)
        if name == "redis-replica":
            with conf.open("a", encoding="utf-8") as f:
                f.write(f"replicaof 127.0.0.1 {ports['redis_master']}\n")
        _own(conf)
        cluster.spawn(name, ["redis-server", str(conf)], as_server=True, mark=f":{port}")
    conf = render(
        "sentinel.conf",
        base / "sentinel" / "sentinel.conf",
        port=ports["sentinel"],
        dir=base / "sentinel",
        master_name=MASTER_NAME,
        master_port=ports["redis_master"],
    )
    _own(conf)  # Sentinel rewrites its file as the master changes
    cluster.spawn(
        "sentinel", ["redis-sentinel", str(conf)], as_server=True, mark=f":{ports['sentinel']}"
    )

    # HAProxy takes every server for up until its first check says otherwise: writes could
    # reach a standby (which refuses them) for the first half second. Wait for the checks.
    def routed() -> bool:
        states = cluster.haproxy_states("ledger_rw")
        return sorted(states.values()) == ["DOWN", "DOWN", "UP"]

    wait_for("HAProxy's read-write listener on the primary alone", routed, 30, config)

    # The ledger databases (441800's through HAProxy once it routes to the primary) and the
    # main one; then the schema and the demo data set into the main database, once (`make run`
    # does the same on an empty database). The nodes move each cluster's persons into it.
    for port in (ports["haproxy_rw"], *(ports[s] for s in PLAIN)):
        asyncio.run(_create_database(port))
    subprocess.run(
        [sys.executable, "-m", "gateway", "demo", "load", "--database-url",
         cluster.data["main_dsn"]],
        check=True,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    node = render(
        "gateway-node.toml",
        base / "gateway-node.toml",
        journal_dir=base / "journal",
        sentinel_port=ports["sentinel"],
        master_name=MASTER_NAME,
    )
    with node.open("a", encoding="utf-8") as f:
        for name, entry in cluster.data["clusters"].items():
            regions = ", ".join(f'"{r}"' for r in entry["regions"])
            f.write(
                f'\n[[ledger_clusters]]\nname = "{name}"\ndsn = "{entry["dsn"]}"\n'
                f"regions = [{regions}]\n"
            )
    if node_settings is not None:
        with node.open("a", encoding="utf-8") as f:
            f.write("\n" + node_settings.read_text(encoding="utf-8"))
    for gw in GATEWAYS:
        cluster.start_gateway(gw)
    for gw in GATEWAYS:
        wait_for(f"gateway node {gw}", lambda gw=gw: cluster.gateway_ready(gw), 90,
                 base / "log" / f"{gw}.log")  # fmt: skip
    gateway = f"http://127.0.0.1:{ports['haproxy_gateway']}/readyz"
    wait_for("HAProxy's gateway listener", lambda: http_get(gateway)[0] == 200, 30)


async def _create_database(rw_port: int) -> None:
    import asyncpg

    deadline = time.monotonic() + 30
    while True:
        try:
            conn = await asyncpg.connect(
                f"postgresql://postgres@127.0.0.1:{rw_port}/postgres", timeout=2
            )
            break
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
            if time.monotonic() > deadline:
                raise ClusterError(f"no PostgreSQL answered on port {rw_port}") from None
            await asyncio.sleep(0.5)
    try:
        await conn.execute(f"CREATE DATABASE {DATABASE}")
    finally:
        await conn.close()


# ---------------------------------------------------------------------------------- down


def down(state_path: Path) -> None:
    """Stop everything the state file names, PostgreSQL too, and remove the data directory."""
    if not state_path.exists():
        return
    cluster = Cluster.load(state_path)
    order = [*GATEWAYS, "haproxy", *MEMBERS, *PLAIN, "sentinel", "redis-replica", "redis-master",
             "etcd"]  # fmt: skip
    names = [n for n in order if n in cluster.data["processes"]]
    names += [n for n in cluster.data["processes"] if n not in names]
    for name in names:
        cluster.stop(name)
    for member in MEMBERS:  # PostgreSQL left behind by a Patroni killed with -9
        master = cluster.postmaster(member)
        if master is not None:
            os.kill(master, signal.SIGQUIT)  # immediate shutdown
            deadline = time.monotonic() + 10
            while _alive(master) and time.monotonic() < deadline:
                time.sleep(0.1)
    if cluster.base.name.startswith("sgw-cluster-"):
        shutil.rmtree(cluster.base, ignore_errors=True)
    state_path.unlink()


# ----------------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--state", type=Path, default=DEFAULT_STATE, help="the state file")
    sub = parser.add_subparsers(dest="command", required=True)
    u = sub.add_parser("up", help="start the cluster")
    u.add_argument(
        "--node-settings", type=Path, help="TOML tables appended to the gateway nodes' config"
    )
    sub.add_parser("down", help="stop everything and remove the data")
    sub.add_parser("status", help="where everything is, as JSON")
    sub.add_parser("primary", help="the Patroni member that is the primary")
    k = sub.add_parser(
        "kill", help="kill -9 a member (pg1..pg3), a gateway node (gw1, gw2) or a Redis"
    )
    k.add_argument("name", choices=[*MEMBERS, *PLAIN, *GATEWAYS, *REDISES])
    s = sub.add_parser("start", help="start a stopped member, server, gateway node or Redis again")
    s.add_argument("name", choices=[*MEMBERS, *PLAIN, *GATEWAYS, *REDISES])
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            cluster = up(args.state, args.node_settings)
            print(json.dumps(cluster.summary(), indent=2))
        elif args.command == "down":
            down(args.state)
        elif args.command == "status":
            print(json.dumps(Cluster.load(args.state).summary(), indent=2))
        elif args.command == "primary":
            primary = Cluster.load(args.state).primary()
            if primary is None:
                print("no primary", file=sys.stderr)
                return 1
            print(primary)
        elif args.command == "kill":
            print(" ".join(map(str, Cluster.load(args.state).kill(args.name))))
        elif args.command == "start":
            cluster = Cluster.load(args.state)
            if cluster.pid(args.name) is not None:
                raise ClusterError(f"{args.name} is running")
            if args.name in MEMBERS:
                cluster.start_member(args.name)
            elif args.name in PLAIN:
                cluster.start_plain(args.name)
            elif args.name in REDISES:
                cluster.start_redis(args.name)
            else:
                cluster.start_gateway(args.name)
    except ClusterError as exc:
        print(f"cluster: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
