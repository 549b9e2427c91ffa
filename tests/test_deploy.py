"""deploy/: the compose file against the Compose specification, its settings and commands against lcstack's.

No Docker engine here: the file is validated against the Compose specification's JSON schema (vendored in
tests/data/schemas/compose-spec.json), every ``LCSTACK_*`` variable it sets must be a field of
:class:`lcstack.settings.Settings`, and every command is parsed by the CLI it calls (lcstack's typer app,
``dask scheduler`` / ``dask worker``), so an unknown command or option fails here, not at
``docker compose up``.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import click
import jsonschema
import pytest
import yaml

from lcstack.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
SCHEMA = Path(__file__).parent / "data" / "schemas" / "compose-spec.json"


def _compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def _settings_env_names() -> set[str]:
    prefix = Settings.model_config["env_prefix"]
    names = set()
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        names.update(getattr(alias, "choices", None) or [prefix + name])
    return {n.upper() for n in names}


def _lcstack_services(compose: dict) -> dict:
    return {k: s for k, s in compose["services"].items() if str(s.get("image", "")).startswith("lcstack")}


def _argv(service: dict) -> list[str]:
    command = service.get("command")
    return shlex.split(command) if isinstance(command, str) else list(command or [])


def _parse(group: Any, argv: list[str]) -> Any:
    """Parse ``argv`` with a click group or command as its shell would; return the command that would run."""
    ctx = group.make_context(group.name or "cli", list(argv), resilient_parsing=False)
    if hasattr(group, "resolve_command"):  # a group (typer vendors its own click)
        name, cmd, rest = group.resolve_command(ctx, [*getattr(ctx, "_protected_args", []), *ctx.args])
        cmd.make_context(name, rest, parent=ctx)
        return cmd
    return group


def test_compose_file_is_valid_against_the_compose_specification():
    schema = json.loads(SCHEMA.read_text())
    compose = _compose()
    # the vendored file's "$schema" is "http://json-schema.org/draft/2019-09/schema#", not the registered URI
    validator_cls = jsonschema.Draft201909Validator
    validator_cls.check_schema(schema)
    errors = sorted(validator_cls(schema).iter_errors(compose), key=lambda e: list(e.path))
    assert not errors, [f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors]
    # the validator does catch mistakes (so the check above can fail)
    bad = json.loads(json.dumps(compose))
    bad["services"]["lcstack"]["depends_on"]["mongo"]["condition"] = "service_ready"
    bad["services"]["worker"]["restart_policy"] = "always"
    assert len(list(validator_cls(schema).iter_errors(bad))) == 2


def test_the_deployment_has_storage_registry_dask_and_a_run():
    services = _compose()["services"]
    assert {"minio", "create-buckets", "mongo", "scheduler", "worker", "lcstack"} <= set(services)
    assert "mc mb" in " ".join(_argv(services["create-buckets"]))
    assert (
        services["lcstack"]["depends_on"]["create-buckets"]["condition"] == "service_completed_successfully"
    )
    mounts = {v.split(":")[1]: v.split(":")[0] for v in services["lcstack"]["volumes"]}
    for target, source in mounts.items():
        assert (DEPLOY / source).exists(), f"{source} (mounted at {target}) is missing from deploy/"
    assert {p.name for p in (DEPLOY / "inputs").iterdir()} == {
        "dataset.csv",
        "seasons.json",
        "lc_labels.json",
        "sl_labels.json",
    }


def test_every_lcstack_variable_it_sets_is_a_setting():
    known = _settings_env_names()
    assert "LCSTACK_S3_ENDPOINT_URL" in known and "DASK_CLUSTER_IP" in known
    services = _lcstack_services(_compose())
    assert set(services) == {"scheduler", "worker", "lcstack"}
    for name, service in services.items():
        env = service.get("environment") or {}
        assert env, f"service {name} sets no lcstack settings"
        unknown = sorted(k for k in env if k.upper() not in known)
        assert not unknown, f"service {name}: {unknown} are not lcstack settings ({sorted(known)})"
        # the values parse as settings too
        Settings.model_validate({k: re.sub(r"\$\{[^}:]+:-([^}]*)\}", r"\1", str(v)) for k, v in env.items()})
    values = yaml.safe_load((DEPLOY / "daskhub-values.yaml").read_text())
    env = values["jupyterhub"]["singleuser"]["extraEnv"]
    worker = values["dask-gateway"]["gateway"]["backend"]["worker"]
    env |= {e["name"]: e["value"] for e in worker["extraContainerConfig"]["env"]}
    assert sorted(k for k in env if k not in known) == []


def test_every_command_is_a_command_of_the_cli_it_calls():
    import typer
    from distributed.cli import dask_scheduler, dask_worker

    from lcstack.cli import app

    lcstack_cli = typer.main.get_command(app)
    dask_clis = {"scheduler": dask_scheduler.main, "worker": dask_worker.main}
    ran = []
    for name, service in _lcstack_services(_compose()).items():
        argv = _argv(service)
        if argv[0] == "lcstack":
            ran.append(_parse(lcstack_cli, argv[1:]).name)
        else:
            assert argv[:1] == ["dask"] and argv[1] in dask_clis, f"service {name} runs {argv}"
            _parse(dask_clis[argv[1]], argv[2:])
            ran.append(argv[1])
    assert sorted(ran) == ["run", "scheduler", "worker"]
    for wrong, match in ((["run", "config.yaml", "--schedular", "x"], "--schedular"), (["rnu"], "rnu")):
        with pytest.raises(Exception, match=match) as err:
            _parse(lcstack_cli, wrong)
        assert "UsageError" in {c.__name__ for c in type(err.value).__mro__}
    with pytest.raises(click.UsageError, match="--nthread"):
        _parse(dask_worker.main, ["tcp://scheduler:8786", "--nthread", "2"])


def test_mounted_config_and_landcoverpy_inputs_load(monkeypatch):
    from lcstack.config import load_config

    cfg = load_config(DEPLOY / "config.yaml")
    assert cfg.storage.startswith("s3://lcstack/")
    points = cfg.read_points()  # checks the points against both label files
    assert set(points["category"]) == set(cfg.read_lc_labels())
    compose = _compose()
    assert cfg.storage.split("/")[2] in " ".join(_argv(compose["services"]["create-buckets"]))


def test_dockerfile_copies_what_exists_and_installs_a_known_extra():
    import tomllib

    text = (DEPLOY / "Dockerfile").read_text()
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for line in text.splitlines():
        if line.startswith("COPY "):
            for src in line.split()[1:-1]:
                assert (ROOT / src).exists(), line
    for extra in re.findall(r'pip install "\.\[([^\]]+)\]"', text):
        assert set(extra.split(",")) <= set(extras), extra
    assert _compose()["services"]["lcstack"]["build"]["dockerfile"] == "deploy/Dockerfile"
