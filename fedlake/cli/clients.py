"""The coordinator's clients of the silos' agents, as the CLI opens them: over Flight where the
deployment names an agent's location, else in-process, each with the caller's token."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fedlake.agent import AgentClient

AGENT_LOG = Path("logs") / "agents.log"  # under the data folder: the in-process agents' own log


class ClientsOnDemand(Mapping[str, "AgentClient"]):
    """The client of each silo's agent, opened when the query first uses that silo, so a query of
    one lake neither starts the embedded PostgreSQL nor dials agents it never asks."""

    def __init__(self, silos: list[str], open_client: Callable[[str], AgentClient]):
        self._silos = silos
        self._open_client = open_client
        self._opened: dict[str, AgentClient] = {}
        self._lock = threading.Lock()  # fragments run on several threads

    def __getitem__(self, silo: str) -> AgentClient:
        if silo not in self._silos:
            raise KeyError(silo)
        with self._lock:
            if silo not in self._opened:
                self._opened[silo] = self._open_client(silo)
            return self._opened[silo]

    def __contains__(self, silo: object) -> bool:
        return silo in self._silos

    def __iter__(self) -> Iterator[str]:
        return iter(self._silos)

    def __len__(self) -> int:
        return len(self._silos)


def keep_agent_log(home: Path) -> Path:
    """Send what in-process agents log (an engine's full error text, kept in the silo) to their log
    file rather than to the terminal, where it would follow the CLI's one-line error."""
    path = home / AGENT_LOG
    logger = logging.getLogger("fedlake")
    if not any(isinstance(h, logging.FileHandler) and Path(h.baseFilename) == path for h in logger.handlers):
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path, delay=True)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
    return path


def require_lake_folder(spec, deployment: str, home: Path) -> None:
    """A lake silo on local disk whose folder is not there: a wrong path (or FEDLAKE_HOME) is said,
    not answered as an empty lake in a folder made for the occasion."""
    from fedlake.errors import SiloError
    from fedlake.silos import resolve_settings

    if spec.kind not in ("s3", "parquet"):
        return
    settings = resolve_settings(spec, deployment)
    if settings.get("bucket") or not settings.get("path"):
        return
    root = Path(settings["path"]).expanduser()
    root = root if root.is_absolute() else home / root
    if not root.is_dir():
        relative = "" if Path(settings["path"]).expanduser().is_absolute() else f", under FEDLAKE_HOME {home}"
        raise SiloError(f"silo {spec.name}: its lake folder {root} does not exist ({spec.source_file}: "
                        f"silos.{spec.name}.connection.{deployment}.path{relative}); nothing was created: "
                        "correct the path, or run `fedlake seed` to make the demo bank there")


def agent_clients(catalog, policy, deployment: str, home: Path, token: str) -> Mapping[str, AgentClient]:
    """A client of every silo's agent presenting `token`, serving queries only (no plug-ins: a query needs none)."""
    from fedlake.agent import AGENT_CA_ENV, FlightAgentClient, InProcessAgentClient, build_agent
    from fedlake.catalog import EnvRef

    def open_client(name: str) -> AgentClient:
        agent = catalog.silo(name).agents.get(deployment)
        if not agent:
            require_lake_folder(catalog.silo(name), deployment, home)
            keep_agent_log(home)
            return InProcessAgentClient(build_agent(catalog, policy, name, "local", home), token)
        where = f"{catalog.path} (silos.{name}.agent.{deployment})"
        location = agent["location"].resolve(where) if isinstance(agent["location"], EnvRef) else agent["location"]
        return FlightAgentClient(name, location, token, os.environ.get(AGENT_CA_ENV))

    return ClientsOnDemand(list(catalog.silos), open_client)
