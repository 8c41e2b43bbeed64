"""``colo-proxy demo``: COLO output comparison protecting real HTTP traffic between
network namespaces (services, traffic driver, live view, summary, orchestration)."""
