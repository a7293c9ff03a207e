"""The deployment files in infra/ agree with the code: every featrec command and option they
run exists, the bytewax runner flags are the launcher's, and the Kubernetes cluster's process
count matches its replicas. (They are not run here: infra/README.md says what is.)"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import click
import yaml

from featrec.cli import main
from featrec.jobs.launch import cold_sessions_path, flow_command, with_cold_sessions

INFRA = Path(__file__).resolve().parents[2] / "infra"


def featrec_commands(text: str) -> list[list[str]]:
    """Every ``featrec ...`` command line in ``text`` (shell words up to ``&&``/``;``)."""
    text = "\n".join(line.split("#", 1)[0] for line in text.splitlines())  # no comments
    out = []
    for match in re.finditer(r"\bfeatrec ((?:run |items )?[a-z]+)([^;&\n\"\]]*)", text):
        words = shlex.split(match.group(1) + match.group(2).replace("$", "X"))
        out.append(words)
    return out


def options_of(words: list[str]) -> tuple[click.Command, list[str]]:
    command: click.Command = main
    rest = list(words)
    while isinstance(command, click.Group) and rest and rest[0] in command.commands:
        command = command.commands[rest.pop(0)]
    return command, [w for w in rest if w.startswith("--")]


def test_every_featrec_command_and_option_in_infra_exists() -> None:
    seen = 0
    for path in [*INFRA.glob("*.yml"), *INFRA.glob("k8s/*.yaml")]:
        text = path.read_text()
        for words in featrec_commands(text):
            command, options = options_of(words)
            assert not isinstance(command, click.Group), f"{path.name}: {words}"
            known = {opt for p in command.params for opt in p.opts}
            assert set(options) <= known, f"{path.name}: {sorted(set(options) - known)}"
            seen += 1
    assert seen >= 4


def k8s(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((INFRA / "k8s" / name).read_text()) if d]


def test_the_statefulset_runs_the_launchers_runner_flags_with_one_process_per_replica() -> None:
    [service, stateful] = k8s("sessions-cluster.yaml")
    assert stateful["kind"] == "StatefulSet" and service["spec"]["clusterIP"] == "None"
    [container] = stateful["spec"]["template"]["spec"]["containers"]
    script = " ".join(container["args"])
    launcher = flow_command("dataflows.sessions:flow()", recovery_dir=Path("/recovery"))
    runner = shlex.split(script.split("exec python ", 1)[1])
    cluster = {
        runner.index("-i"),
        runner.index("-i") + 1,
        runner.index("-a"),
        runner.index("-a") + 1,
    }
    assert [w for i, w in enumerate(runner) if i not in cluster] == launcher[1:]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert int(env["PROCESSES"]) == stateful["spec"]["replicas"]
    assert env["FEATREC_SOURCE"] == "kafka"
    # the store of idle sessions where the launcher puts it, inside the recovery store
    assert env["FEATREC_COLD_SESSIONS"] == str(cold_sessions_path(Path("/recovery")))
    assert '-i "$i" -a "$addrs"' in script
    # secrets only from Secrets
    secret = {e["name"] for e in container["env"] if "valueFrom" in e}
    assert {"FEATREC_REDIS_URL", "FEATREC_KAFKA_SASL_PASSWORD"} <= secret


def test_serving_is_a_deployment_of_featrec_serve() -> None:
    [deployment, service] = k8s("serving.yaml")
    assert deployment["kind"] == "Deployment" and service["kind"] == "Service"
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert container["args"][:2] == ["featrec", "serve"]


def test_the_launcher_puts_the_store_of_idle_sessions_inside_the_recovery_store() -> None:
    env = with_cold_sessions({"FEATREC_HOME": "/h"}, Path("/r"))
    assert env == {"FEATREC_HOME": "/h", "FEATREC_COLD_SESSIONS": "/r/featrec/cold-sessions"}
    # one set by the operator is kept
    mine = {"FEATREC_COLD_SESSIONS": "/fast-disk/cold"}
    assert with_cold_sessions(mine, Path("/r")) == mine
