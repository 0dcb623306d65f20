"""The few Kubernetes API calls the operator makes, async over the blocking client in a thread pool.

Reads come from Kopf's indexes (watch streams), so this is only writes plus the price ConfigMap and,
for a job with spec.queueName waiting in Kueue, its Workload and queues.
Responses are not deserialized into client models (`_preload_content=False`): the operator never
needs them, and deserializing is most of the client's CPU cost.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from .api import GROUP, PLURAL, VERSION
from .queueing import GROUP as KUEUE_GROUP
from .queueing import VERSION as KUEUE_VERSION

JSON = dict[str, Any]
T = TypeVar("T")
MERGE_PATCH = "application/merge-patch+json"


def load_api_client(pool_size: int) -> client.ApiClient:
    """In-cluster credentials when running in a pod, else the kubeconfig (KUBECONFIG or ~/.kube/config)."""
    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException:
        config.load_kube_config(client_configuration=configuration)
    configuration.connection_pool_maxsize = pool_size
    return client.ApiClient(configuration)


class StaleChildError(RuntimeError):
    """A child with our name exists but belongs to another owner (a deleted FineTuneJob of the same
    name whose children the garbage collector has not removed yet): try again later."""


def is_status(err: BaseException, *codes: int) -> bool:
    return isinstance(err, ApiException) and err.status in codes


class Kube:
    def __init__(self, api: client.ApiClient, workers: int) -> None:
        self.api = api
        self.core = client.CoreV1Api(api)
        self.batch = client.BatchV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kube")

    async def _call(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn)

    async def create(self, obj: JSON) -> bool:
        """Create a child; False if it already exists and is ours (an earlier pass, or an earlier
        operator, made it); StaleChildError if it exists but another owner's."""
        meta = obj["metadata"]
        ns, name, kind = meta["namespace"], meta["name"], obj["kind"]
        creators: dict[str, Callable[[], Any]] = {
            "ConfigMap": lambda: self.core.create_namespaced_config_map(ns, obj, _preload_content=False),
            "Pod": lambda: self.core.create_namespaced_pod(ns, obj, _preload_content=False),
            "Job": lambda: self.batch.create_namespaced_job(ns, obj, _preload_content=False),
            "Service": lambda: self.core.create_namespaced_service(ns, obj, _preload_content=False),
        }
        readers: dict[str, Callable[[], Any]] = {
            "ConfigMap": lambda: self.core.read_namespaced_config_map(name, ns, _preload_content=False),
            "Pod": lambda: self.core.read_namespaced_pod(name, ns, _preload_content=False),
            "Job": lambda: self.batch.read_namespaced_job(name, ns, _preload_content=False),
            "Service": lambda: self.core.read_namespaced_service(name, ns, _preload_content=False),
        }
        try:
            await self._call(creators[kind])
        except ApiException as err:
            if err.status != 409:
                raise
            try:
                existing = json.loads((await self._call(readers[kind])).data)
            except ApiException as gone:
                if gone.status == 404:  # deleted in between: create it on the next pass
                    raise StaleChildError(f"{kind} {ns}/{name} was just deleted") from gone
                raise
            ours = {ref["uid"] for ref in meta.get("ownerReferences", [])}
            theirs = {ref.get("uid") for ref in existing.get("metadata", {}).get("ownerReferences") or []}
            if ours & theirs:
                return False
            raise StaleChildError(
                f"{kind} {ns}/{name} exists but is not this FineTuneJob's (a deleted job of the same name "
                "is still being cleaned up); retrying"
            ) from err
        return True

    async def patch_job(self, namespace: str, name: str, patch: JSON) -> None:
        await self._call(
            lambda: self.batch.patch_namespaced_job(
                name, namespace, patch, _content_type=MERGE_PATCH, _preload_content=False
            )
        )

    async def patch_status(self, namespace: str, name: str, status: JSON) -> None:
        await self._call(
            lambda: self.custom.patch_namespaced_custom_object_status(
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                name,
                {"status": status},
                _content_type=MERGE_PATCH,
                _preload_content=False,
            )
        )

    async def kueue_list(self, namespace: str, plural: str, label_selector: str = "") -> list[JSON]:
        """Kueue objects of a namespace (ApiException 404: Kueue's API is not installed)."""
        resp = await self._call(
            lambda: self.custom.list_namespaced_custom_object(
                KUEUE_GROUP,
                KUEUE_VERSION,
                namespace,
                plural,
                label_selector=label_selector,
                _preload_content=False,
            )
        )
        return list(json.loads(resp.data).get("items") or [])

    async def kueue_get(self, namespace: str | None, plural: str, name: str) -> JSON | None:
        """One Kueue object (cluster-scoped when namespace is None); None if it does not exist."""

        def get() -> Any:
            if namespace is None:
                return self.custom.get_cluster_custom_object(
                    KUEUE_GROUP, KUEUE_VERSION, plural, name, _preload_content=False
                )
            return self.custom.get_namespaced_custom_object(
                KUEUE_GROUP, KUEUE_VERSION, namespace, plural, name, _preload_content=False
            )

        try:
            resp = await self._call(get)
        except ApiException as err:
            if err.status == 404:
                return None
            raise
        return dict(json.loads(resp.data))

    async def patch_workload(self, namespace: str, name: str, patch: JSON) -> None:
        await self._call(
            lambda: self.custom.patch_namespaced_custom_object(
                KUEUE_GROUP,
                KUEUE_VERSION,
                namespace,
                "workloads",
                name,
                patch,
                _content_type=MERGE_PATCH,
                _preload_content=False,
            )
        )

    async def read_config_map_data(self, namespace: str, name: str) -> dict[str, str] | None:
        try:
            resp = await self._call(
                lambda: self.core.read_namespaced_config_map(name, namespace, _preload_content=False)
            )
        except ApiException as err:
            if err.status == 404:
                return None
            raise
        body = json.loads(resp.data)
        return {str(k): str(v) for k, v in (body.get("data") or {}).items()}

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.api.close()
