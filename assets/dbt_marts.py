"""The dbt marts (dbt_project/) as Dagster assets: dbt models on the governed zone, dbt tests as
asset checks. They are built where the governed zone is: dbt-duckdb locally, dbt-postgres in prod
(the resource, resources/dbt_marts.py, picks the target from the deployment).

Dagster reads the dbt manifest, which the install step builds once, offline (`python -m
assets.dbt_marts parse`): importing this module or loading the Definitions never runs dbt. The
manifest is parsed with the local target; the graph it describes is the same on both adapters,
and each run's `dbt build` parses again for its own. Every dbt command runs offline: no package
install, no usage statistics, no DuckDB extension download.

The dbt sources are the governed zone's tables, so the translator gives them the keys of the
governed assets (["governed", <table>]) and the marts land downstream of them, in group "marts".
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import dagster as dg
from dagster_dbt import DagsterDbtTranslator, DagsterDbtTranslatorSettings, DbtCliResource, DbtProject, dbt_assets

from fedlake.errors import FedlakeError
from fedlake.silos import data_dir
from resources.dbt_marts import FedlakeDbtResource

DBT_PROJECT_DIR = Path(__file__).resolve().parent.parent / "dbt_project"
DBT_RESOURCE_KEY = "dbt"
MARTS_GROUP = "marts"
GOVERNED_SOURCE = "governed"  # the dbt source name, and the key prefix of the governed assets
PARSE_COMMAND = "python -m assets.dbt_marts parse"

dbt_project = DbtProject(project_dir=DBT_PROJECT_DIR, profiles_dir=DBT_PROJECT_DIR)


def dbt_executable() -> str:
    """The dbt of this Python environment, so that a virtualenv works without being activated."""
    here = Path(sys.executable).with_name("dbt")
    return str(here) if here.exists() else "dbt"


class FedlakeDbtTranslator(DagsterDbtTranslator):
    """dbt sources are the governed assets; every dbt model is a mart under ["marts", <model>]."""

    def get_asset_key(self, dbt_resource_props: Mapping[str, Any]) -> dg.AssetKey:
        if dbt_resource_props["resource_type"] == "source":
            source = dbt_resource_props["source_name"]
            if source != GOVERNED_SOURCE:
                raise ValueError(
                    f"dbt source '{source}.{dbt_resource_props['name']}' ({dbt_resource_props['original_file_path']}): "
                    f"the marts may only read the governed zone (source '{GOVERNED_SOURCE}'), where data is compliant"
                )
            return dg.AssetKey([GOVERNED_SOURCE, dbt_resource_props["name"]])
        return dg.AssetKey([MARTS_GROUP, dbt_resource_props["name"]])

    def get_group_name(self, dbt_resource_props: Mapping[str, Any]) -> str | None:
        return MARTS_GROUP

    def get_automation_condition(self, dbt_resource_props: Mapping[str, Any]) -> dg.AutomationCondition | None:
        # Like the governed join layer: a mart follows its governed inputs when they change.
        return dg.AutomationCondition.eager()


class DbtManifestMissingError(FileNotFoundError):
    """The manifest is an install-time artifact; its absence means the install step did not run."""


def dbt_marts_assets(manifest_path: str | Path | None = None) -> dg.AssetsDefinition:
    """The marts, their staging tables and every dbt test (as asset checks), run by one `dbt build`
    with the resource under the key "dbt"."""
    manifest_path = Path(manifest_path) if manifest_path else dbt_project.manifest_path
    if not manifest_path.exists():
        raise DbtManifestMissingError(
            f"dbt manifest not found at {manifest_path}: the install step builds it (`{PARSE_COMMAND}`, run by `make install`)"
        )
    manifest = json.loads(manifest_path.read_text())
    translator = FedlakeDbtTranslator(settings=DagsterDbtTranslatorSettings(enable_asset_checks=True))

    @dbt_assets(manifest=manifest, project=dbt_project, dagster_dbt_translator=translator, name="dbt_marts")
    def dbt_marts(context, dbt: DbtCliResource):
        """`dbt build` on the selected marts: models, then their tests, which report as asset checks."""
        try:
            invocation = dbt.cli(["build"], context=context, raise_on_error=False)
        except FedlakeError as exc:  # the deployment's configuration: one line, not a traceback
            raise dg.Failure(description=str(exc)) from None
        events = list(invocation.stream())
        yield from with_row_counts(events, manifest, dbt)
        error = invocation.get_error()
        if error is not None:
            raise error

    return dbt_marts


def with_row_counts(events: list[Any], manifest: Mapping[str, Any], dbt: DbtCliResource) -> Iterator[Any]:
    """Add each built table's row count to its materialization, counted once dbt has exited.

    dbt holds the local DuckDB file open, for writing, until it exits, so no other process can read
    it while it runs: dagster-dbt's own fetch_row_counts would read during the run and hit the lock.
    """
    relations = {}
    for event in events:
        if isinstance(event, dg.Output):
            node = manifest["nodes"].get(_metadata_text(event.metadata.get("unique_id")), {})
            if node.get("resource_type") == "model":
                relations[event.output_name] = (node["schema"], node["alias"])
    counts = dbt.row_counts(relations) if isinstance(dbt, FedlakeDbtResource) else {}
    for event in events:
        if isinstance(event, dg.Output) and event.output_name in counts:
            event = event.with_metadata({**event.metadata, "dagster/row_count": counts[event.output_name]})
        yield event


def _metadata_text(value: Any) -> str:
    return str(getattr(value, "value", value) or "")


def prepare_dbt_manifest(home: str | Path | None = None) -> Path:
    """Run `dbt parse` into dbt_project/target, offline, and return the manifest's path.

    Parsing needs the profile, not a connection: the data folder only fills in the marts
    database's path, so any folder works (FEDLAKE_HOME, else ./data). dbt runs as a plain
    subprocess so that its own messages, not Dagster's, explain a failure.
    """
    home = Path(home).expanduser().resolve() if home else data_dir()
    target = dbt_project.project_dir / dbt_project.target_path
    command = [
        dbt_executable(),
        "parse",
        "--project-dir", str(dbt_project.project_dir),
        "--profiles-dir", str(dbt_project.profiles_dir),
        "--target", "local",
        "--target-path", str(target),
        "--log-path", str(target),
        "--vars", json.dumps({"fedlake_home": str(home)}),
    ]
    env = {**os.environ, "DBT_SEND_ANONYMOUS_USAGE_STATS": "false", "DO_NOT_TRACK": "1"}
    done = subprocess.run(command, env=env, cwd=dbt_project.project_dir, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"`dbt parse` failed (exit {done.returncode}):\n{done.stdout}{done.stderr}")
    if not dbt_project.manifest_path.exists():
        raise DbtManifestMissingError(f"`dbt parse` succeeded but wrote no manifest at {dbt_project.manifest_path}")
    return dbt_project.manifest_path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m assets.dbt_marts", description="fedlake's dbt marts")
    commands = parser.add_subparsers(dest="command", required=True)
    parse = commands.add_parser("parse", help="build the dbt manifest that Dagster loads (the install step)")
    parse.add_argument("--home", help="the data folder (default: FEDLAKE_HOME, else ./data)")
    args = parser.parse_args(argv)
    if args.command == "parse":
        print(f"dbt manifest: {prepare_dbt_manifest(args.home)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
