//! The gRPC service `roomy.v1.Agent`: decode, call the backend, encode.
//! Nothing else happens here; errors become status codes in `error`.

use roomy_proto::format_bytes;
use roomy_proto::v1::agent_server::Agent;
use roomy_proto::v1::{
    GrowPoolRequest, GrowPoolResponse, InspectPoolRequest, InspectRequest, InspectResponse,
    PoolStatus, RepairAction, RepairRequest, RepairResponse, ResizeAction, ResizeRequest,
    ResizeResponse,
};
use tonic::{Request, Response, Status};

use crate::backend::{GrowAction, StorageBackend};

/// The agent's gRPC service over one backend.
pub struct AgentService<B> {
    backend: B,
}

impl<B: StorageBackend> AgentService<B> {
    /// Serve `backend`.
    pub fn new(backend: B) -> Self {
        AgentService { backend }
    }
}

#[tonic::async_trait]
impl<B: StorageBackend> Agent for AgentService<B> {
    type SyncStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<roomy_proto::v1::Event, Status>> + Send>,
    >;

    async fn sync(
        &self,
        _request: Request<tonic::Streaming<roomy_proto::v1::SyncRequest>>,
    ) -> Result<Response<Self::SyncStream>, Status> {
        Err(Status::unimplemented("sync: being written"))
    }

    async fn inspect(
        &self,
        request: Request<InspectRequest>,
    ) -> Result<Response<InspectResponse>, Status> {
        let name = request.into_inner().container;
        let selector = (!name.is_empty()).then_some(name.as_str());
        let containers = self.backend.inspect(selector).await?;
        Ok(Response::new(InspectResponse { containers }))
    }

    async fn resize(
        &self,
        request: Request<ResizeRequest>,
    ) -> Result<Response<ResizeResponse>, Status> {
        let ResizeRequest { container, size } = request.into_inner();
        let outcome = self.backend.resize(&container, &size).await?;
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
        }))
    }

    async fn inspect_pool(
        &self,
        _request: Request<InspectPoolRequest>,
    ) -> Result<Response<PoolStatus>, Status> {
        Ok(Response::new(self.backend.inspect_pool().await?))
    }

    async fn grow_pool(
        &self,
        request: Request<GrowPoolRequest>,
    ) -> Result<Response<GrowPoolResponse>, Status> {
        let GrowPoolRequest {
            data_size,
            metadata_size,
        } = request.into_inner();
        let (before, after) = self.backend.grow_pool(&data_size, &metadata_size).await?;
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
        let outcome = self.backend.repair(&request.into_inner().container).await?;
        let action = if outcome.repaired {
            RepairAction::Repaired
        } else {
            RepairAction::Unchanged
        };
        Ok(Response::new(RepairResponse {
            action: action as i32,
            message: outcome.message,
            container: Some(outcome.container),
        }))
    }
}
