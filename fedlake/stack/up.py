"""Bring the prod-like deployment up on one machine, and down again.

Every value the prod deployment reads from the environment ({env: NAME} in silos.yaml, the clients'
token variables in policies.yaml, the ledger, keys and CA) is made here, kept under the state folder
(secrets 0600), and written to `stack.env` for the operator to `source`. Each agent process gets its
own silo's credentials and signing key only: never the data owner's DSN nor another silo's secrets."""

from __future__ import annotations

import json
import os
import secrets
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from fedlake.catalog import Catalog, EnvRef, load_catalog
from fedlake.errors import ConfigError, FedlakeError
from fedlake.policy.model import POLICIES_ENV, load_policy
from fedlake.stack.keys import signing_key_files
from fedlake.stack.postgres_server import create_database, start_postgres, stop_postgres
from fedlake.runtime import process_alive
from fedlake.stack.processes import free_port, spawn, stop_pid, wait_for_port
from fedlake.stack.s3_server import create_bucket, start_s3

STATE_FILE = "stack.json"
ENV_FILE = "stack.env"
AGENT_START_SECONDS = 90.0


@dataclass
class Stack:
    """What `up` started: the state folder, the environment it exported and the processes by role."""

    root: Path
    env: dict[str, str]
    processes: dict[str, int] = field(default_factory=dict)

    @property
    def env_file(self) -> Path:
        return self.root / ENV_FILE


def _private_json(path: Path, value: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(value, out, indent=2)
    os.replace(tmp, path)


def _secrets(root: Path) -> dict[str, str]:
    """Passwords, tokens and keys made at the first `up` and reused after, so that data seeded into
    PostgreSQL stays reachable across a restart."""
    path = root / "secrets.json"
    return json.loads(path.read_text()) if path.exists() else {}


class _Secrets:
    def __init__(self, root: Path):
        self.root, self.values = root, _secrets(root)

    def get(self, name: str, make=lambda: secrets.token_urlsafe(24)) -> str:
        if name not in self.values:
            self.values[name] = make()
            _private_json(self.root / "secrets.json", self.values)
        return self.values[name]


def _silo_env(catalog: Catalog, name: str, admin_dsn: str, s3: str, root: Path, made: _Secrets) -> tuple[dict[str, str], set[str]]:
    """The values of one silo's {env: NAME} connection settings; and which of them are the owner's."""
    spec = catalog.silo(name)
    settings = spec.connection("prod")
    values: dict[str, str] = {}
    owner: set[str] = set()
    if spec.kind == "postgres":
        from fedlake.silos.postgres import MADE_SCHEMA, ensure_roles

        owner_dsn = create_database(admin_dsn, name)
        reader, writer = f"{name}_reader", f"{name}_writer"
        passwords = made.get(f"{reader}.password"), made.get(f"{writer}.password")
        schema = settings.get("schema") if isinstance(settings.get("schema"), str) else "public"
        writer_schema = settings.get("writer_schema") if isinstance(settings.get("writer_schema"), str) else MADE_SCHEMA
        ensure_roles(owner_dsn, schema, reader, writer, writer_schema, *passwords)
        where = owner_dsn.split("@", 1)[1]
        values = {"dsn": f"postgresql://{reader}:{passwords[0]}@{where}",
                  "writer_dsn": f"postgresql://{writer}:{passwords[1]}@{where}", "owner_dsn": owner_dsn}
    elif spec.kind == "s3":
        bucket = f"fedlake-{name.replace('_', '-')}"
        values = {"bucket": bucket, "endpoint_url": s3, "access_key_id": made.get("s3.access_key_id"),
                  "secret_access_key": made.get("s3.secret_access_key"), "region": "us-east-1", "prefix": name}
        create_bucket(s3, bucket, values["access_key_id"], values["secret_access_key"])
    elif spec.kind == "parquet":
        lake = root / "lakes" / name
        lake.mkdir(parents=True, exist_ok=True)
        values = {"path": str(lake)}
    env = {}
    for key, value in settings.items():
        if not isinstance(value, EnvRef):
            continue
        if key not in values:
            raise ConfigError(spec.source_file, f"silos.{name}.connection.prod.{key}", "fedlake up cannot provide this setting")
        env[value.name] = values[key]
        if key == "owner_dsn":
            owner.add(value.name)
    return env, owner


def _running(root: Path) -> dict[str, int]:
    path = root / STATE_FILE
    if not path.exists():
        return {}
    return {role: pid for role, pid in json.loads(path.read_text()).get("processes", {}).items() if process_alive(pid)}


def up(
    root: Path,
    silos_path: Path,
    policies_path: Path,
    dagster: bool = False,
    workspace: Path | None = None,
    dagster_port: int = 3000,
) -> Stack:
    """Start the deployment whose state lives in `root`; returns what it started."""
    root = root.resolve()
    if _running(root):
        raise FedlakeError(f"a deployment is already up in {root}: run `fedlake down` first (or `source {root / ENV_FILE}`)")
    catalog = load_catalog(silos_path)
    policy = load_policy(policies_path, catalog)
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o700)
    made = _Secrets(root)
    stack = Stack(root, {})
    state = {"pgdata": str(root / "pgdata"), "processes": stack.processes}
    try:
        admin = start_postgres(root / "pgdata", made.get("postgres.password"))
        _private_json(root / STATE_FILE, state)
        s3, s3_process = start_s3(root / "logs" / "s3.log")
        stack.processes["s3"] = s3_process.pid
        _private_json(root / STATE_FILE, state)
        stack.env.update(_common_env(catalog, policy, silos_path, policies_path, admin, root, made))
        owners: set[str] = set()
        own: dict[str, dict[str, str]] = {}
        for name in catalog.silos:
            own[name], owner = _silo_env(catalog, name, admin, s3, root, made)
            stack.env.update(own[name])
            owners |= owner
        keys = signing_key_files(root / "keys", [*catalog.silos, "coordinator"])
        stack.env["FEDLAKE_SIGNING_KEY"] = str(keys["coordinator"])
        ports = {name: free_port() for name in catalog.silos}
        agents: dict[str, subprocess.Popen] = {}
        for name, spec in catalog.silos.items():
            agent = spec.agents.get("prod") or {}
            if not isinstance(agent.get("location"), EnvRef):
                raise ConfigError(spec.source_file, f"silos.{name}.agent.prod.location", "fedlake up needs an {env: NAME} for each agent's address")
            stack.env[agent["location"].name] = f"grpc+tls://127.0.0.1:{ports[name]}"
        shared = {k: v for k, v in stack.env.items() if not any(k in silo_env for silo_env in own.values())}
        for name in catalog.silos:
            inherited = {k: v for k, v in os.environ.items() if k not in stack.env}  # no stale secret from the shell
            env = {**inherited, **shared, **{k: v for k, v in own[name].items() if k not in owners},
                   "FEDLAKE_SIGNING_KEY": str(keys[name]), "FEDLAKE_HOME": str(root / "agents" / name)}
            env.pop("FEDLAKE_GOVERNED_DSN", None)
            command = [sys.executable, "-m", "fedlake.cli", "--deployment", "prod", "agent", "serve", "--silo", name,
                       "--host", "127.0.0.1", "--port", str(ports[name]),
                       "--tls-cert", str(root / "certs" / "agent.pem"), "--tls-key", str(root / "certs" / "agent.key")]
            agents[name] = spawn(command, env, root / "logs" / f"agent-{name}.log")
            stack.processes[f"agent:{name}"] = agents[name].pid
            _private_json(root / STATE_FILE, state)
        for name, process in agents.items():
            _await_agent(root, name, ports[name], process)
        if dagster:
            _start_dagster(stack, admin, workspace or Path("workspace.yaml"), dagster_port)
            _private_json(root / STATE_FILE, state)
        _write_env(stack)
        return stack
    except BaseException:
        down(root)
        raise


def _common_env(catalog: Catalog, policy, silos_path: Path, policies_path: Path, admin: str, root: Path, made: _Secrets) -> dict[str, str]:
    from fedlake.agent.tls import make_tls

    certs = root / "certs"
    if not (certs / "ca.pem").exists():
        make_tls(certs, ("localhost", "127.0.0.1"), days=365)
    env = {
        "FEDLAKE_DEPLOYMENT": "prod",
        "FEDLAKE_SILOS": str(silos_path.resolve()),
        POLICIES_ENV: str(policies_path.resolve()),
        "FEDLAKE_HOME": str(root / "coordinator"),
        "FEDLAKE_LEDGER": create_database(admin, "ledger"),
        "FEDLAKE_LEDGER_KEYS": str(root / "keys" / "public"),
        "FEDLAKE_PSEUDONYM_KEY": made.get("pseudonym_key", lambda: secrets.token_hex(32)),
        "FEDLAKE_AGENT_CA": str(certs / "ca.pem"),
    }
    for client in policy.clients.values():
        env[client.token_env] = made.get(f"token.{client.identity}", lambda: secrets.token_urlsafe(32))
    governed = catalog.governed_connections.get("prod", {})
    for key, value in governed.items():
        if isinstance(value, EnvRef):
            if key != "dsn":
                raise ConfigError(catalog.path, f"governed_zone.connection.prod.{key}", "fedlake up cannot provide this setting")
            env[value.name] = create_database(admin, "governed")
    return env


def _await_agent(root: Path, name: str, port: int, process: subprocess.Popen) -> None:
    log = root / "logs" / f"agent-{name}.log"
    deadline = time.monotonic() + AGENT_START_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            lines = [line for line in log.read_text().splitlines() if line.strip()]
            raise FedlakeError(f"agent {name} did not start: {lines[-1] if lines else 'no output'} (log: {log})")
        try:
            wait_for_port(port, timeout=0.5)
            return
        except RuntimeError:
            continue
    raise FedlakeError(f"agent {name} did not listen on 127.0.0.1:{port} within {AGENT_START_SECONDS:.0f}s (log: {log})")


def _start_dagster(stack: Stack, admin: str, workspace: Path, port: int) -> None:
    """Dagster's webserver and daemon on the dagster-postgres instance (deploy/prod/dagster.yaml)."""
    home = stack.root / "dagster_home"
    home.mkdir(exist_ok=True)
    config = workspace.resolve().parent / "deploy" / "prod" / "dagster.yaml"
    (home / "dagster.yaml").write_text(config.read_text())
    stack.env["DAGSTER_HOME"] = str(home)
    stack.env["DAGSTER_PG_URL"] = create_database(admin, "dagster")
    env = {**os.environ, **stack.env}
    bin_dir = Path(sys.executable).parent
    webserver = spawn([str(bin_dir / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(port), "-w", str(workspace.resolve())],
                      env, stack.root / "logs" / "dagster-webserver.log")
    stack.processes["dagster-webserver"] = webserver.pid
    daemon = spawn([str(bin_dir / "dagster-daemon"), "run", "-w", str(workspace.resolve())], env, stack.root / "logs" / "dagster-daemon.log")
    stack.processes["dagster-daemon"] = daemon.pid
    wait_for_port(port, timeout=180, process=webserver)
    stack.env["FEDLAKE_DAGSTER_URL"] = f"http://127.0.0.1:{port}"


def _write_env(stack: Stack) -> None:
    lines = ["# fedlake's prod-like deployment on this machine: `source` me. Secrets inside: keep 0600."]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in sorted(stack.env.items())]
    # the README's next steps call `fedlake`: the one installed next to the interpreter that ran `up`
    lines.append(f'export PATH={shlex.quote(str(Path(sys.executable).parent))}:"$PATH"')
    fd = os.open(stack.env_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write("\n".join(lines) + "\n")


def down(root: Path, purge: bool = False) -> list[str]:
    """Stop what `up` started in `root` (agents and Dagster first, PostgreSQL last); returns the roles
    stopped. `purge` also deletes the state folder, data and secrets included."""
    root = root.resolve()
    path = root / STATE_FILE
    stopped = []
    if path.exists():
        state = json.loads(path.read_text())
        for role, pid in reversed(list(state.get("processes", {}).items())):
            if process_alive(pid):
                stop_pid(pid)
                stopped.append(role)
        pgdata = Path(state["pgdata"])
        if (pgdata / "postmaster.pid").exists():
            stop_postgres(pgdata)
            stopped.append("postgres")
        path.unlink()
    (root / ENV_FILE).unlink(missing_ok=True)
    if purge and root.exists():
        import shutil

        shutil.rmtree(root)
    return stopped
