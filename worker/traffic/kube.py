"""A Kubernetes API client from the worker's settings."""

from __future__ import annotations

from kubernetes import client, config


def api_client_from_settings(
    kubeconfig: str | None, in_cluster: bool, context: str | None
) -> client.ApiClient:
    """In-cluster service account, or a kubeconfig file (None: $KUBECONFIG or ~/.kube/config)."""
    if in_cluster:
        configuration = client.Configuration()
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        return client.ApiClient(configuration)
    api: client.ApiClient = config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=kubeconfig, context=context
    )
    return api
