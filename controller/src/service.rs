//! The gRPC service `roomy.v1.Controller`: authorize, route or fan out,
//! audit. Agents do the storage work.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use roomy_proto::v1::controller_server::Controller;
use roomy_proto::v1::{
    AddHostRequest, AuditEntry, GrowPoolRequest, GrowPoolResponse, Host, HostContainer, HostError,
    HostGrowPoolRequest, HostPool, InspectPoolRequest, InspectRequest, ListAuditRequest,
    ListAuditResponse, ListContainersRequest, ListContainersResponse, ListHostsRequest,
    ListHostsResponse, ListPoolsResponse, RemoveHostRequest, RemoveHostResponse, RepairRequest,
    RepairResponse, ResizeRequest, ResizeResponse, TargetRequest, TargetResizeRequest,
};
use roomy_proto::Target;
use tonic::{Request, Response, Status};

use crate::error::ControllerError;
use crate::registry::Registry;
use crate::roles::{Role, Roles};
use crate::store::{AuditRecord, Store};

/// The controller's service.
pub struct ControllerService {
    registry: Arc<Registry>,
    store: Arc<dyn Store>,
    roles: Roles,
    /// Bound on one routed call (a resize of a large filesystem takes a while).
    call_timeout: std::time::Duration,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The caller's verified certificate identity.
fn identity<T>(request: &Request<T>) -> Result<String, ControllerError> {
    roomy_proto::tls::peer(request)
        .map(|p| p.identity.clone())
        .ok_or(ControllerError::Unauthenticated)
}

fn parse_target(text: &str) -> Result<Target, ControllerError> {
    text.parse()
        .map_err(|e: roomy_proto::TargetError| ControllerError::Invalid(e.to_string()))
}

impl ControllerService {
    /// Serve `registry`, auditing into `store`; routed calls give up after
    /// `call_timeout`.
    pub fn new(
        registry: Arc<Registry>,
        store: Arc<dyn Store>,
        roles: Roles,
        call_timeout: std::time::Duration,
    ) -> Self {
        ControllerService {
            registry,
            store,
            roles,
            call_timeout,
        }
    }

    /// Check the caller's role; a refused mutation is audited too.
    fn authorize<T>(
        &self,
        request: &Request<T>,
        needed: Role,
        action: &'static str,
        target: &str,
    ) -> Result<String, ControllerError> {
        let who = identity(request)?;
        if let Err(e) = self.roles.check(&who, needed, action) {
            if needed > Role::Viewer {
                self.audit(&who, action, target, 0, 0, Err(&e));
            }
            return Err(e);
        }
        Ok(who)
    }

    fn audit(
        &self,
        who: &str,
        action: &str,
        target: &str,
        from: u64,
        to: u64,
        result: Result<&str, &ControllerError>,
    ) {
        let (result, message) = match result {
            Ok(message) => ("ok".to_string(), message.to_string()),
            Err(e) => (format!("{:?}", e.code()), e.to_string()),
        };
        let record = AuditRecord {
            time_ms: now_ms(),
            principal: who.to_string(),
            action: action.to_string(),
            target: target.to_string(),
            from_bytes: from,
            to_bytes: to,
            result,
            message,
        };
        if let Err(e) = self.store.append_audit(&record) {
            tracing::error!(error = %e, ?record, "could not write the audit log");
        }
    }

    /// Ask every host (or only `host`) at once: the answers, and an error
    /// row for each host that did not answer in time or refused.
    async fn ask_hosts<T, F, Fut>(
        &self,
        host: String,
        f: F,
    ) -> Result<(Vec<(String, T)>, Vec<HostError>), ControllerError>
    where
        F: Fn(roomy_proto::v1::agent_client::AgentClient<tonic::transport::Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        let names = if host.is_empty() {
            self.registry.names()
        } else {
            self.registry.client(&host)?;
            vec![host]
        };
        let mut answers = Vec::new();
        let mut errors = Vec::new();
        for (host, answer) in self.registry.fan_out(&names, f).await {
            match answer {
                Ok(value) => answers.push((host, value)),
                Err(status) => errors.push(HostError {
                    host: host.clone(),
                    code: format!("{:?}", status.code()),
                    message: ControllerError::from_agent(&host, status).to_string(),
                }),
            }
        }
        Ok((answers, errors))
    }

    async fn call_agent<T, F, Fut>(&self, host: &str, f: F) -> Result<T, ControllerError>
    where
        F: FnOnce(roomy_proto::v1::agent_client::AgentClient<tonic::transport::Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<Response<T>, Status>>,
    {
        let client = self.registry.client(host)?;
        let result = match tokio::time::timeout(self.call_timeout, f(client)).await {
            Ok(r) => r,
            Err(_) => Err(Status::deadline_exceeded(
                "the agent did not answer in time",
            )),
        };
        self.registry.observe(host, result.as_ref().map(|_| ()));
        result
            .map(Response::into_inner)
            .map_err(|s| ControllerError::from_agent(host, s))
    }
}

#[tonic::async_trait]
impl Controller for ControllerService {
    type EventsStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<roomy_proto::v1::Event, Status>> + Send>,
    >;

    async fn events(
        &self,
        _request: Request<roomy_proto::v1::EventsRequest>,
    ) -> Result<Response<Self::EventsStream>, Status> {
        Err(Status::unimplemented("events: being written"))
    }

    async fn list_policies(
        &self,
        _request: Request<roomy_proto::v1::ListPoliciesRequest>,
    ) -> Result<Response<roomy_proto::v1::ListPoliciesResponse>, Status> {
        Err(Status::unimplemented("policies: being written"))
    }

    async fn set_policy(
        &self,
        _request: Request<roomy_proto::v1::Policy>,
    ) -> Result<Response<roomy_proto::v1::SetPolicyResponse>, Status> {
        Err(Status::unimplemented("policies: being written"))
    }

    async fn remove_policy(
        &self,
        _request: Request<roomy_proto::v1::RemovePolicyRequest>,
    ) -> Result<Response<roomy_proto::v1::RemovePolicyResponse>, Status> {
        Err(Status::unimplemented("policies: being written"))
    }

    async fn explain_policy(
        &self,
        _request: Request<roomy_proto::v1::TargetRequest>,
    ) -> Result<Response<roomy_proto::v1::Explanation>, Status> {
        Err(Status::unimplemented("policies: being written"))
    }

    async fn list_containers(
        &self,
        request: Request<ListContainersRequest>,
    ) -> Result<Response<ListContainersResponse>, Status> {
        self.authorize(&request, Role::Viewer, "ls", "")?;
        let (answers, errors) = self
            .ask_hosts(request.into_inner().host, |mut client| async move {
                client
                    .inspect(InspectRequest::default())
                    .await
                    .map(Response::into_inner)
            })
            .await?;
        let rows = answers
            .into_iter()
            .flat_map(|(host, inspect)| {
                inspect.containers.into_iter().map(move |c| HostContainer {
                    host: host.clone(),
                    container: Some(c),
                })
            })
            .collect();
        Ok(Response::new(ListContainersResponse { rows, errors }))
    }

    async fn inspect_container(
        &self,
        request: Request<TargetRequest>,
    ) -> Result<Response<HostContainer>, Status> {
        self.authorize(&request, Role::Viewer, "inspect", "")?;
        let target = parse_target(&request.into_inner().target)?;
        let container = target.container.clone();
        let reply = self
            .call_agent(&target.host, |mut c| async move {
                c.inspect(InspectRequest { container }).await
            })
            .await?;
        let container = reply.containers.into_iter().next();
        Ok(Response::new(HostContainer {
            host: target.host,
            container,
        }))
    }

    async fn resize(
        &self,
        request: Request<TargetResizeRequest>,
    ) -> Result<Response<ResizeResponse>, Status> {
        let text = request.get_ref().target.clone();
        let who = self.authorize(&request, Role::Operator, "resize", &text)?;
        let TargetResizeRequest { target, size } = request.into_inner();
        let result = async {
            let target = parse_target(&target)?;
            let container = target.container.clone();
            self.call_agent(&target.host, |mut c| async move {
                c.resize(ResizeRequest { container, size }).await
            })
            .await
        }
        .await;
        match &result {
            Ok(r) => self.audit(
                &who,
                "resize",
                &text,
                r.from_bytes,
                r.to_bytes,
                Ok(&r.message),
            ),
            Err(e) => self.audit(&who, "resize", &text, 0, 0, Err(e)),
        }
        Ok(Response::new(result?))
    }

    async fn repair(
        &self,
        request: Request<TargetRequest>,
    ) -> Result<Response<RepairResponse>, Status> {
        let text = request.get_ref().target.clone();
        let who = self.authorize(&request, Role::Operator, "repair", &text)?;
        let result = async {
            let target = parse_target(&text)?;
            let container = target.container.clone();
            self.call_agent(&target.host, |mut c| async move {
                c.repair(RepairRequest { container }).await
            })
            .await
        }
        .await;
        match &result {
            Ok(r) => {
                let size = r
                    .container
                    .as_ref()
                    .map(|c| c.persisted_size_bytes)
                    .unwrap_or(0);
                self.audit(&who, "repair", &text, 0, size, Ok(&r.message))
            }
            Err(e) => self.audit(&who, "repair", &text, 0, 0, Err(e)),
        }
        Ok(Response::new(result?))
    }

    async fn list_hosts(
        &self,
        request: Request<ListHostsRequest>,
    ) -> Result<Response<ListHostsResponse>, Status> {
        self.authorize(&request, Role::Viewer, "hosts ls", "")?;
        Ok(Response::new(ListHostsResponse {
            hosts: self.registry.list(),
        }))
    }

    async fn add_host(&self, request: Request<AddHostRequest>) -> Result<Response<Host>, Status> {
        let name = request.get_ref().name.clone();
        let who = self.authorize(&request, Role::Admin, "hosts add", &name)?;
        let AddHostRequest {
            name,
            address,
            server_name,
        } = request.into_inner();
        let result = self.registry.add(&name, &address, &server_name, "cli");
        match &result {
            Ok(()) => self.audit(
                &who,
                "hosts add",
                &name,
                0,
                0,
                Ok(&format!("added {name} at {address}")),
            ),
            Err(e) => self.audit(&who, "hosts add", &name, 0, 0, Err(e)),
        }
        result?;
        let host = self
            .registry
            .list()
            .into_iter()
            .find(|h| h.name == name)
            .unwrap_or_default();
        Ok(Response::new(host))
    }

    async fn remove_host(
        &self,
        request: Request<RemoveHostRequest>,
    ) -> Result<Response<RemoveHostResponse>, Status> {
        let name = request.get_ref().name.clone();
        let who = self.authorize(&request, Role::Admin, "hosts rm", &name)?;
        let result = self.registry.remove(&name);
        let message = match &result {
            Ok(r) if r.source == "config" => format!(
                "removed {name}; it is in the controller's config file and comes back when the controller restarts unless removed there too"
            ),
            Ok(_) => format!("removed {name}"),
            Err(_) => String::new(),
        };
        match &result {
            Ok(_) => self.audit(&who, "hosts rm", &name, 0, 0, Ok(&message)),
            Err(e) => self.audit(&who, "hosts rm", &name, 0, 0, Err(e)),
        }
        result?;
        Ok(Response::new(RemoveHostResponse { message }))
    }

    async fn list_pools(
        &self,
        request: Request<ListContainersRequest>,
    ) -> Result<Response<ListPoolsResponse>, Status> {
        self.authorize(&request, Role::Viewer, "pool ls", "")?;
        let (answers, errors) = self
            .ask_hosts(request.into_inner().host, |mut client| async move {
                client
                    .inspect_pool(InspectPoolRequest {})
                    .await
                    .map(Response::into_inner)
            })
            .await?;
        let rows = answers
            .into_iter()
            .map(|(host, pool)| HostPool {
                host,
                pool: Some(pool),
            })
            .collect();
        Ok(Response::new(ListPoolsResponse { rows, errors }))
    }

    async fn grow_pool(
        &self,
        request: Request<HostGrowPoolRequest>,
    ) -> Result<Response<GrowPoolResponse>, Status> {
        let host = request.get_ref().host.clone();
        let who = self.authorize(&request, Role::Operator, "pool grow", &host)?;
        let HostGrowPoolRequest {
            host,
            data_size,
            metadata_size,
        } = request.into_inner();
        let result = self
            .call_agent(&host, |mut c| async move {
                c.grow_pool(GrowPoolRequest {
                    data_size,
                    metadata_size,
                })
                .await
            })
            .await;
        match &result {
            Ok(r) => {
                let size = |p: &Option<roomy_proto::v1::PoolStatus>| {
                    p.as_ref().map(|p| p.data_total_bytes).unwrap_or(0)
                };
                self.audit(
                    &who,
                    "pool grow",
                    &host,
                    size(&r.before),
                    size(&r.after),
                    Ok(&r.message),
                )
            }
            Err(e) => self.audit(&who, "pool grow", &host, 0, 0, Err(e)),
        }
        Ok(Response::new(result?))
    }

    async fn list_audit(
        &self,
        request: Request<ListAuditRequest>,
    ) -> Result<Response<ListAuditResponse>, Status> {
        self.authorize(&request, Role::Viewer, "audit", "")?;
        let limit = match request.into_inner().limit {
            0 => 100,
            n => n.min(10_000),
        };
        let entries = self
            .store
            .audit(limit)
            .map_err(Status::from)?
            .into_iter()
            .map(|a| AuditEntry {
                time_ms: a.time_ms,
                principal: a.principal,
                action: a.action,
                target: a.target,
                from_bytes: a.from_bytes,
                to_bytes: a.to_bytes,
                result: a.result,
                message: a.message,
            })
            .collect();
        Ok(Response::new(ListAuditResponse { entries }))
    }
}
