//! The gRPC service `roomy.v1.Agent`: decode, call the backend, encode.
//! Nothing else happens here; errors become status codes in `error`.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use roomy_metrics::{Exposition, Kind};
use roomy_proto::format_bytes;
use roomy_proto::v1::agent_server::Agent;
use roomy_proto::v1::{
    GrowPoolRequest, GrowPoolResponse, InspectPoolRequest, InspectRequest, InspectResponse,
    PoolStatus, RepairAction, RepairRequest, RepairResponse, ResizeAction, ResizeRequest,
    ResizeResponse, WatchInventoryRequest,
};
use tonic::{Request, Response, Status};

use crate::backend::{ContainerRef, GrowAction, PoolGrowth, SizeRequest, StorageBackend};
use crate::error::AgentError;
use crate::events::EventLog;
use crate::metrics::{result_word, AgentMetrics, Source};
use crate::policy::{Cadence, Engine};
use crate::sync::{PolicyStore, SyncHub};

/// The agent's gRPC service over one backend, with its policy engine.
pub struct AgentService<B> {
    backend: B,
    engine: Engine<B>,
    hub: Arc<SyncHub>,
    metrics: Arc<AgentMetrics>,
}

/// A resize request's words as values. Bad input is refused here, before
/// anything is looked up, the same for every backend.
pub fn parse_resize(
    container: &str,
    size: &str,
) -> Result<(ContainerRef, SizeRequest), AgentError> {
    let size: SizeRequest = size.parse()?;
    Ok((ContainerRef::parse(container)?, size))
}

/// Run a mutation in a task of its own and wait for it. When the caller
/// goes away (Ctrl-C in roomyctl, a deadline), tonic drops the handler's
/// future; the task goes on, so the lock it holds is released only when
/// the kernel work it started is done, and its result still reaches the
/// metrics and the log. Dropping the handle does not cancel the task.
async fn to_completion<T: Send + 'static>(
    work: impl std::future::Future<Output = Result<T, AgentError>> + Send + 'static,
) -> Result<T, AgentError> {
    tokio::spawn(work)
        .await
        .map_err(|e| AgentError::Internal(format!("the mutation's task failed: {e}")))?
}

/// Renders /metrics.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

impl<B: StorageBackend + Clone> AgentService<B> {
    /// Serve `backend`, and enforce the policies kept in `state_dir` (and
    /// any the controller sends) with an engine started here. Returns the
    /// service and the /metrics renderer.
    pub fn start(
        backend: B,
        state_dir: &Path,
        cadence: Cadence,
    ) -> Result<(Self, Render), AgentError> {
        let policies = Arc::new(PolicyStore::open(state_dir)?);
        let events = Arc::new(EventLog::open(state_dir)?);
        let metrics = Arc::new(AgentMetrics::default());
        let engine = Engine::new(
            backend.clone(),
            policies.clone(),
            events.clone(),
            metrics.clone(),
            cadence,
        );
        engine.spawn();
        let hub = Arc::new(SyncHub::new(policies.clone(), events.clone()));
        let render: Render = {
            let (engine, hub, metrics) = (engine.clone(), hub.clone(), metrics.clone());
            Arc::new(move || {
                let mut out = Exposition::new();
                engine.render(&mut out);
                metrics.render(&mut out);
                let gauges = [
                    (
                        "roomy_events_buffered",
                        "Events not yet acknowledged by the controller.",
                        events.pending() as f64,
                    ),
                    (
                        "roomy_controller_connected",
                        "1 while the controller's sync stream is open.",
                        f64::from(u8::from(hub.connected())),
                    ),
                    (
                        "roomy_policies",
                        "Policies this agent holds.",
                        policies.current().policies.len() as f64,
                    ),
                ];
                for (name, help, v) in gauges {
                    out.family(name, Kind::Gauge, help);
                    out.sample(name, &[], v);
                }
                out.finish()
            })
        };
        Ok((
            AgentService {
                backend,
                engine,
                hub,
                metrics,
            },
            render,
        ))
    }
}

#[tonic::async_trait]
impl<B: StorageBackend + Clone> Agent for AgentService<B> {
    type SyncStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<roomy_proto::v1::Event, Status>> + Send>,
    >;

    async fn sync(
        &self,
        request: Request<tonic::Streaming<roomy_proto::v1::SyncRequest>>,
    ) -> Result<Response<Self::SyncStream>, Status> {
        let rx = self.hub.session(request.into_inner());
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn inspect(
        &self,
        request: Request<InspectRequest>,
    ) -> Result<Response<InspectResponse>, Status> {
        let name = request.into_inner().container;
        let selector = match name.as_str() {
            "" => None,
            name => Some(ContainerRef::parse(name)?),
        };
        let list = crate::inventory::list(&self.backend, &self.engine, selector.as_ref()).await?;
        Ok(Response::new(list))
    }

    type WatchInventoryStream =
        std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<InspectResponse, Status>> + Send>>;

    async fn watch_inventory(
        &self,
        request: Request<WatchInventoryRequest>,
    ) -> Result<Response<Self::WatchInventoryStream>, Status> {
        let pacing = crate::inventory::Pacing::from_request(request.get_ref());
        let rx = crate::inventory::spawn(self.backend.clone(), self.engine.clone(), pacing);
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn resize(
        &self,
        request: Request<ResizeRequest>,
    ) -> Result<Response<ResizeResponse>, Status> {
        let ResizeRequest { container, size } = request.into_inner();
        let (container, size) = parse_resize(&container, &size)?;
        let (backend, metrics) = (self.backend.clone(), self.metrics.clone());
        let outcome = to_completion(async move {
            let started = Instant::now();
            let result = backend.resize(&container, size).await;
            let word = result_word(&result, |o| matches!(o.action, GrowAction::Grown { .. }));
            metrics.resize(Source::Api, word, started.elapsed().as_secs_f64());
            result
        })
        .await?;
        let (action, from_bytes, to_bytes) = match outcome.action {
            GrowAction::Unchanged { size } => (ResizeAction::Unchanged, size, size),
            GrowAction::Grown { from, to } => (ResizeAction::Grown, from, to),
        };
        Ok(Response::new(ResizeResponse {
            action: action as i32,
            from_bytes,
            to_bytes,
            message: outcome.message,
            container: Some(outcome.container),
            // Read after the resize ended: lists with this count show it.
            generation: self.backend.change_count(),
        }))
    }

    async fn inspect_pool(
        &self,
        _request: Request<InspectPoolRequest>,
    ) -> Result<Response<PoolStatus>, Status> {
        let mut pool = self.backend.inspect_pool().await?;
        pool.data_fill_rate_bytes_per_second = self.engine.pool_fill_rate();
        Ok(Response::new(pool))
    }

    async fn grow_pool(
        &self,
        request: Request<GrowPoolRequest>,
    ) -> Result<Response<GrowPoolResponse>, Status> {
        let GrowPoolRequest {
            data_size,
            metadata_size,
        } = request.into_inner();
        let growth = PoolGrowth::parse(&data_size, &metadata_size)?;
        let (backend, metrics) = (self.backend.clone(), self.metrics.clone());
        let (before, after) = to_completion(async move {
            let result = backend.grow_pool(growth, None).await;
            let word = result_word(&result, |(b, a): &(PoolStatus, PoolStatus)| {
                a.data_total_bytes > b.data_total_bytes
                    || a.metadata_total_bytes > b.metadata_total_bytes
            });
            metrics.pool_grow(Source::Api, word);
            result
        })
        .await?;
        let unchanged = before.data_total_bytes == after.data_total_bytes
            && before.metadata_total_bytes == after.metadata_total_bytes;
        let message = if unchanged {
            format!("pool {} is already that size: nothing changed", after.name)
        } else {
            format!(
                "grew pool {} online: data {} -> {}, metadata {} -> {}",
                after.name,
                format_bytes(before.data_total_bytes),
                format_bytes(after.data_total_bytes),
                format_bytes(before.metadata_total_bytes),
                format_bytes(after.metadata_total_bytes)
            )
        };
        Ok(Response::new(GrowPoolResponse {
            before: Some(before),
            after: Some(after),
            message,
        }))
    }

    async fn repair(
        &self,
        request: Request<RepairRequest>,
    ) -> Result<Response<RepairResponse>, Status> {
        let container = ContainerRef::parse(&request.into_inner().container)?;
        let backend = self.backend.clone();
        let outcome = to_completion(async move { backend.repair(&container).await }).await?;
        let action = if outcome.repaired {
            RepairAction::Repaired
        } else {
            RepairAction::Unchanged
        };
        Ok(Response::new(RepairResponse {
            action: action as i32,
            message: outcome.message,
            container: Some(outcome.container),
            generation: self.backend.change_count(),
        }))
    }
}
