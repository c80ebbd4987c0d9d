"""The Procfile and docker-compose.yml must run what the repository contains.

No Docker engine runs where the tests run, so the compose file is checked by reading it: every
command names modules, files, queues and management commands that exist, services wait for
healthy dependencies, and every variable it passes is documented in .env.example.
"""

import importlib
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from django.conf import settings
from django.core.management import get_commands

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
ENV_EXAMPLE_NAMES = set(
    re.findall(r"^([A-Z][A-Z0-9_]*)=", (ROOT / ".env.example").read_text(), re.M)
)
# Variables of third-party images, not of this project.
# Read by the database and broker images themselves, not by the project.
IMAGE_VARIABLES = {
    "POSTGRES_DB",
    "POSTGRES_USER",
    "POSTGRES_PASSWORD",
    "RABBITMQ_DEFAULT_USER",
    "RABBITMQ_DEFAULT_PASS",
    "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
}


def procfile_commands() -> dict[str, list[str]]:
    commands = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, command = line.split(":", 1)
            # ${NAME:-default} -> default: what the command runs with no overrides.
            command = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", command)
            commands[name] = shlex.split(command)
    return commands


def compose_commands() -> dict[str, list[str]]:
    commands = {}
    for name, service in SERVICES.items():
        command = service.get("command")
        if command is not None and "build" in service:  # ours, not a third-party image
            commands[name] = shlex.split(command) if isinstance(command, str) else command
    return commands


def option(argv: list[str], *names: str) -> str | None:
    for index, arg in enumerate(argv):
        for name in names:
            if arg == name:
                return argv[index + 1]
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return None


def assert_command_runs_repository_code(argv: list[str]) -> None:
    program = argv[0]
    if program == "gunicorn":
        module, attribute = argv[1].split(":")
        assert callable(getattr(importlib.import_module(module), attribute))
        # The settings file keeps tokens out of the access log and ties forwarded headers to
        # TRUSTED_PROXIES: a web command without it loses both.
        assert option(argv, "-c", "--config") == "config/gunicorn.py", argv
    elif program == "celery":
        app_module = option(argv, "-A", "--app")
        assert importlib.import_module(app_module).celery_app is not None
        subcommand = next(arg for arg in argv[3:] if not arg.startswith("-"))
        assert subcommand in {"worker", "beat", "flower"}
        if queues := option(argv, "--queues", "-Q"):
            assert set(queues.split(",")) <= set(settings.JOB_QUEUES), queues
        if conf := option(argv, "--conf"):
            assert (ROOT / conf).is_file(), conf
        if scheduler := option(argv, "--scheduler", "-S"):
            module, cls = scheduler.split(":")
            assert getattr(importlib.import_module(module), cls)
    elif program == "python":
        assert argv[1] == "manage.py"
        assert argv[2] in get_commands(), f"no management command {argv[2]!r}"
    elif program == "sh":
        # A shell only to run steps in order (`sh -c "a && b"`): each step must pass on its own,
        # and nothing else a shell can do (`;`, `||`, pipes, redirections, substitutions) hides
        # a step from this check.
        assert argv[1:2] == ["-c"] and len(argv) == 3, argv
        for step in argv[2].split("&&"):
            assert not set(step) & set(";|&<>`$()\n"), f"not a plain command: {step!r}"
            assert_command_runs_repository_code(shlex.split(step))
    else:
        pytest.fail(f"unexpected program {program!r} in {argv}")


def consumed_queues(commands: dict[str, list[str]]) -> set[str]:
    queues = set()
    for argv in commands.values():
        if argv[0] == "celery" and "worker" in argv:
            queues |= set(option(argv, "--queues", "-Q").split(","))
    return queues


@pytest.mark.parametrize("name", sorted(procfile_commands()))
def test_every_procfile_process_runs_repository_code(name):
    assert_command_runs_repository_code(procfile_commands()[name])


@pytest.mark.parametrize("name", sorted(compose_commands()))
def test_every_compose_command_runs_repository_code(name):
    assert_command_runs_repository_code(compose_commands()[name])


@pytest.mark.parametrize(
    "script",
    [
        "python manage.py migrate; rm -rf /data",
        "python manage.py migrate || true",
        "python manage.py migrate && curl http://example.com | sh",
        "python manage.py migrate && python manage.py no_such_command",
        "python manage.py migrate && bash",
    ],
)
def test_a_shell_command_passes_only_as_steps_that_each_pass(script):
    with pytest.raises((AssertionError, pytest.fail.Exception)):
        assert_command_runs_repository_code(["sh", "-c", script])


def test_the_processes_are_named_as_the_design_says():
    for names in (set(procfile_commands()), set(SERVICES)):
        assert {"web", "beat", "flower"} <= names
        assert any(name.startswith("worker") for name in names)


def test_workers_consume_every_queue_in_both_files():
    assert consumed_queues(procfile_commands()) == set(settings.JOB_QUEUES)
    assert consumed_queues(compose_commands()) == set(settings.JOB_QUEUES)


def test_compose_services_wait_for_healthy_dependencies_and_restart():
    for name, service in SERVICES.items():
        for dependency, condition in service.get("depends_on", {}).items():
            assert dependency in SERVICES
            expected = (
                "service_completed_successfully" if dependency == "migrate" else "service_healthy"
            )
            assert condition["condition"] == expected, (name, dependency)
            if expected == "service_healthy":
                assert "healthcheck" in SERVICES[dependency], dependency
        if name != "migrate":
            assert service["restart"] in {"unless-stopped", "always"}, name


def test_compose_services_that_serve_something_have_healthchecks():
    for name, service in SERVICES.items():
        if name.startswith("worker") or "ports" in service or name in {"postgres", "redis"}:
            assert "healthcheck" in service, name


def test_workers_get_time_for_a_soft_shutdown_before_docker_kills_them():
    for name, service in SERVICES.items():
        if name.startswith("worker"):
            assert service["stop_signal"] == "SIGTERM"
            grace = int(service["stop_grace_period"].removesuffix("s"))
            assert grace > settings.CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT, name


def test_compose_makes_the_deployer_declare_the_proxies_in_front_of_the_web():
    # Without it the web refuses to start (config/wsgi.py); compose says so before it starts.
    declared = SERVICES["web"]["environment"]["TRUSTED_PROXIES"]
    assert re.fullmatch(r"\$\{TRUSTED_PROXIES:\?[^}]+\}", declared), declared


def test_compose_makes_the_deployer_set_a_token_for_the_metrics():
    # /metrics names queues, tasks and worker hosts: compose does not start the web without one.
    declared = SERVICES["web"]["environment"]["METRICS_BEARER_TOKEN"]
    assert re.fullmatch(r"\$\{METRICS_BEARER_TOKEN:\?[^}]+\}", declared), declared


def test_both_compose_brokers_keep_their_queued_work_across_a_restart(settings):
    # Redis, the default broker: an append-only file on a volume
    redis = SERVICES["redis"]
    assert redis["command"][redis["command"].index("--appendonly") + 1] == "yes"
    assert any(volume.endswith(":/data") for volume in redis["volumes"])
    # RabbitMQ, behind its profile: its data on a volume, under a node name that survives a
    # re-created container
    rabbitmq = SERVICES["rabbitmq"]
    assert rabbitmq["profiles"] == ["rabbitmq"]
    assert any(volume.endswith(":/var/lib/rabbitmq") for volume in rabbitmq["volumes"])
    assert rabbitmq["hostname"] == "rabbitmq"
    # with the consumer timeout the settings (and their system check) assume
    erl_args = rabbitmq["environment"]["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"]
    timeout_ms = int(re.search(r"-rabbit consumer_timeout (\d+)", erl_args).group(1))
    assert timeout_ms == settings.RABBITMQ_CONSUMER_TIMEOUT_SECONDS * 1000
    # and every process that talks to the broker waits for it when it is there
    for name in ("web", "worker", "worker_heavy", "beat", "flower"):
        assert SERVICES[name]["depends_on"]["rabbitmq"] == {
            "condition": "service_healthy",
            "required": False,
        }, name


def test_every_variable_compose_passes_is_documented_in_env_example():
    passed = set()
    for service in SERVICES.values():
        passed |= set(service.get("environment", {}))
    substituted = set(re.findall(r"\$\{(\w+)", (ROOT / "docker-compose.yml").read_text()))
    undocumented = (passed | substituted) - IMAGE_VARIABLES - ENV_EXAMPLE_NAMES
    assert not undocumented


def test_every_variable_settings_read_is_documented_in_env_example():
    source = (ROOT / "config" / "settings.py").read_text()
    read = set(re.findall(r"env(?:\.\w+)?\(\s*\"([A-Z][A-Z0-9_]*)\"", source))
    assert read, "the pattern no longer finds settings; fix it"
    assert not read - ENV_EXAMPLE_NAMES


def test_production_settings_pass_the_deploy_check():
    # given production settings: DEBUG off, a real secret, /metrics behind a token
    env = {
        "PATH": "/usr/bin:/bin",
        "DEBUG": "0",
        "SECRET_KEY": "x" * 30 + "production-like-secret-value-42",
        "METRICS_BEARER_TOKEN": "a-token-prometheus-also-has",
    }
    # when Django's deployment checklist runs, warnings counted as failures
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    # then nothing is reported
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues (0 silenced)" in result.stdout


def test_flower_refuses_to_start_without_basic_auth():
    env = {"PATH": "/usr/bin:/bin", "DEBUG": "1", "FLOWER_BASIC_AUTH": ""}
    result = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "config", "flower", "--conf=config/flower.py"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode != 0
    assert "FLOWER_BASIC_AUTH" in result.stderr
