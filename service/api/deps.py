"""Dependency providers: the runtime's parts, taken from app state (async: never a worker thread)."""

from __future__ import annotations

from litestar.datastructures import State
from litestar.di import NamedDependency, Provide

from service.auth.accounts import Accounts
from service.collection.coverage_report import CoverageReports
from service.db.health import HealthProbe
from service.db.pool import Pool
from service.process.runtime import Runtime
from service.tasks.configs import Configs
from service.tasks.jobs import CollectionJobs
from service.tasks.registry import TaskRegistry

__all__ = [
    "AccountsDep", "ConfigsDep", "CoverageReportsDep", "HealthProbeDep", "JobsDep", "PoolDep", "RegistryDep",
    "RuntimeDep", "dependencies",
]


def _runtime(state: State) -> Runtime:
    runtime: Runtime = state.runtime
    return runtime


async def provide_pool(state: State) -> Pool:
    return _runtime(state).pool


async def provide_registry(state: State) -> TaskRegistry:
    return _runtime(state).registry


async def provide_jobs(state: State) -> CollectionJobs:
    return _runtime(state).jobs


async def provide_configs(state: State) -> Configs:
    return _runtime(state).configs


async def provide_runtime(state: State) -> Runtime:
    return _runtime(state)


async def provide_health_probe(state: State) -> HealthProbe:
    return _runtime(state).health


async def provide_accounts(state: State) -> Accounts:
    return _runtime(state).accounts


async def provide_coverage_reports(state: State) -> CoverageReports:
    runtime = _runtime(state)
    return CoverageReports(runtime.pool, runtime.exchanges, runtime.clock)  # holds nothing of its own: made per request


dependencies = {
    "pool": Provide(provide_pool),
    "registry": Provide(provide_registry),
    "jobs": Provide(provide_jobs),
    "configs": Provide(provide_configs),
    "runtime": Provide(provide_runtime),
    "health_probe": Provide(provide_health_probe),
    "accounts": Provide(provide_accounts),
    "coverage_reports": Provide(provide_coverage_reports),
}

# Handler parameter types: the parameter's name picks the provider above.
PoolDep = NamedDependency[Pool]
RegistryDep = NamedDependency[TaskRegistry]
JobsDep = NamedDependency[CollectionJobs]
ConfigsDep = NamedDependency[Configs]
RuntimeDep = NamedDependency[Runtime]
HealthProbeDep = NamedDependency[HealthProbe]
AccountsDep = NamedDependency[Accounts]
CoverageReportsDep = NamedDependency[CoverageReports]
