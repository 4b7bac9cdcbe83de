"""The container image, read rather than built (no Docker engine here): hadolint, the image's contract
(non-root, tini, exec-form HEALTHCHECK, data volume), and the `healthcheck` command it relies on."""

from __future__ import annotations

import asyncio
import fnmatch
import os
import re
import shlex
import socket
import subprocess
import sys
import tomllib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from service.cli import main as cli

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str


def instructions(text: str) -> list[Instruction]:
    """Dockerfile instructions in order, continuation lines joined and comments dropped."""
    logical: list[str] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    result = []
    for entry in logical:
        keyword, _, arguments = entry.partition(" ")
        result.append(Instruction(keyword.upper(), arguments.strip()))
    return result


def stages(text: str) -> dict[str, list[Instruction]]:
    """Each stage's instructions, by the name given in `FROM … AS name`."""
    named: dict[str, list[Instruction]] = {}
    current: list[Instruction] = []
    for instruction in instructions(text):
        if instruction.keyword == "FROM":
            current = [instruction]
            named[instruction.arguments.split()[-1]] = current
        else:
            current.append(instruction)
    return named


def dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


def runtime_stage() -> list[Instruction]:
    """The last stage: what the image runs."""
    return list(stages(dockerfile()).values())[-1]


def only(stage: list[Instruction], keyword: str) -> Instruction:
    found = [instruction for instruction in stage if instruction.keyword == keyword]
    assert len(found) == 1, f"expected one {keyword} in the runtime stage, found {found}"
    return found[0]


def env_values(stage: list[Instruction]) -> dict[str, str]:
    """ENV KEY=VALUE pairs of a stage (the form this Dockerfile uses)."""
    values: dict[str, str] = {}
    for instruction in stage:
        if instruction.keyword == "ENV":
            for pair in shlex.split(instruction.arguments):
                key, _, value = pair.partition("=")
                values[key] = value
    return values


def test_hadolint_finds_nothing() -> None:
    """hadolint reports no error, warning, info or style finding on the Dockerfile."""
    result = subprocess.run(
        [str(VENV_BIN / "hadolint"), "--no-color", "Dockerfile"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0 and result.stdout.strip() == "", result.stdout + result.stderr


def test_hadolint_ignores_carry_a_reason() -> None:
    """Any `# hadolint ignore=` in the Dockerfile says why on the same line."""
    for line in dockerfile().splitlines():
        if "hadolint ignore=" in line:
            reason = line.split("hadolint ignore=", 1)[1].split(maxsplit=1)
            assert len(reason) == 2 and len(reason[1]) > 10, f"ignore without a reason: {line}"


def test_build_is_multi_stage_with_locked_pinned_uv_and_a_slim_glibc_runtime() -> None:
    """The build stage installs uv.lock with a pinned uv; the runtime is a slim Debian Python with no uv in it."""
    named = stages(dockerfile())
    assert len(named) >= 2
    build, *_, runtime = named.values()
    build_text = "\n".join(f"{i.keyword} {i.arguments}" for i in build)
    assert re.search(r"uv:\d+\.\d+\.\d+ |uv==\d+\.\d+\.\d+", build_text), "uv is not pinned to a version"
    assert "uv sync --locked --no-dev" in build_text
    assert runtime[0].arguments.startswith("python:3.11-slim-bookworm ")
    assert not any("uv" in i.arguments.split() or "/uv " in i.arguments for i in runtime)


def test_runtime_runs_as_a_non_root_user_under_tini() -> None:
    """The service runs as a non-root uid, with tini as PID 1 and `kline-collector serve` as its child."""
    runtime = runtime_stage()
    user = only(runtime, "USER").arguments.split(":")[0]
    assert user not in ("root", "0")
    assert only(runtime, "ENTRYPOINT").arguments == '["/usr/bin/tini", "--"]'
    assert only(runtime, "CMD").arguments == '["kline-collector", "serve"]'
    install = next(i.arguments for i in runtime if i.keyword == "RUN" and "apt-get install" in i.arguments)
    assert re.search(r"\btini=\S+", install), "tini is not pinned"


def test_healthcheck_is_exec_form_with_a_start_period_and_a_real_command() -> None:
    """HEALTHCHECK is exec form, has a start period, and runs a command the CLI actually has."""
    healthcheck = only(runtime_stage(), "HEALTHCHECK").arguments
    assert "--start-period=" in healthcheck
    command = healthcheck.partition(" CMD ")[2]
    assert command.startswith("["), "HEALTHCHECK CMD is in shell form"
    assert command == '["kline-collector", "healthcheck"]'
    assert "healthcheck" in cli.commands


def test_embedded_postgres_data_lives_in_a_volume_the_service_user_owns() -> None:
    """EMBEDDED_PG_DIR is inside the declared VOLUME, which is made and chowned for the service's uid."""
    runtime = runtime_stage()
    env = env_values(runtime)
    volume = only(runtime, "VOLUME").arguments.strip('[]" ')
    assert env["EMBEDDED_PG_DIR"].startswith(volume.rstrip("/") + "/")
    uid = only(runtime, "USER").arguments.split(":")[0]
    setup = " ".join(i.arguments for i in runtime if i.keyword == "RUN")
    assert f"--uid {uid}" in setup
    assert re.search(rf"chown -R \S+ {re.escape(volume)}\b", setup)
    assert env["PORT"] and env["HOST"] == "0.0.0.0"


def test_every_copied_file_reaches_the_build_context() -> None:
    """Each file the build stage COPYs exists and is not excluded by .dockerignore."""
    ignored = [
        line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    sources: list[str] = []
    for instruction in instructions(dockerfile()):
        if instruction.keyword == "COPY" and "--from=" not in instruction.arguments:
            sources.extend(instruction.arguments.split()[:-1])
    assert "service" in [s.rstrip("/").removeprefix("./") for s in sources]
    for source in sources:
        name = source.rstrip("/").removeprefix("./")
        assert (ROOT / name).exists(), f"COPY {name}: no such file"
        assert not any(fnmatch.fnmatch(name, pattern) for pattern in ignored), f"COPY {name}: in .dockerignore"


def test_python_version_file_matches_the_image_and_the_project() -> None:
    """.python-version names the Python the image uses, one the project accepts."""
    version = (ROOT / ".python-version").read_text().strip()
    assert version == "3.11"
    assert runtime_stage()[0].arguments.startswith(f"python:{version}-")
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert requires == f">={version}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@asynccontextmanager
async def health_server(status: int) -> AsyncIterator[int]:
    """A stand-in server on 127.0.0.1 whose /health answers `status`; yields its port."""

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok" if status == 200 else "unavailable"}, status=status)

    app = web.Application()
    app.router.add_get("/health", health)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield port
    finally:
        await runner.cleanup()


async def run_healthcheck(port: int) -> tuple[int, str]:
    """`kline-collector healthcheck` with PORT=port, as the container runs it; exit code and output."""
    env = {**os.environ, "PORT": str(port), "HTTP_PROXY": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9"}
    proc = await asyncio.create_subprocess_exec(
        str(VENV_BIN / "kline-collector"), "healthcheck", "--timeout", "5",
        env=env, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_healthcheck_command_exits_0_when_health_answers_200() -> None:
    """`kline-collector healthcheck` exits 0 when /health on PORT answers 200, even with an HTTP proxy set."""
    async with health_server(200) as port:
        code, out = await run_healthcheck(port)
    assert code == 0, out


async def test_healthcheck_command_exits_1_when_health_answers_503() -> None:
    """`kline-collector healthcheck` exits 1 and says why when /health answers 503 (database away)."""
    async with health_server(503) as port:
        code, out = await run_healthcheck(port)
    assert code == 1 and "503" in out, out


async def test_healthcheck_command_exits_1_when_nothing_listens() -> None:
    """`kline-collector healthcheck` exits 1 when no server listens on PORT."""
    code, out = await run_healthcheck(free_port())
    assert code == 1 and "unhealthy" in out, out
