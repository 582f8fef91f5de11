//! Prometheus exposition and the /metrics HTTP endpoint (being written).
