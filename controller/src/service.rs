//! The gRPC service `roomy.v1.Controller`: authorize, route or fan out,
//! audit. Agents do the storage work.

use std::collections::HashMap;
use std::sync::Arc;

use roomy_proto::v1::controller_server::Controller;
use roomy_proto::v1::{
    AddHostRequest, AuditEntry, Event, EventKind, EventsRequest, Explanation, GrowPoolRequest,
    GrowPoolResponse, Host, HostContainer, HostError, HostGrowPoolRequest, HostPool,
    InspectPoolRequest, InspectRequest, ListAuditRequest, ListAuditResponse, ListContainersRequest,
    ListContainersResponse, ListHostsRequest, ListHostsResponse, ListPoliciesRequest,
    ListPoliciesResponse, ListPoolsResponse, Policy, RemoveHostRequest, RemoveHostResponse,
    RemovePolicyRequest, RemovePolicyResponse, RepairRequest, RepairResponse, ResizeRequest,
    ResizeResponse, SetPolicyResponse, TargetRequest, TargetResizeRequest,
};
use roomy_proto::Target;
use roomy_tls::Kind;
use roomy_tls::CONTROLLER_NAME;
use tonic::{Request, Response, Status};

use crate::clock::now_ms;
use crate::distribute::Distributor;
use crate::error::ControllerError;
use crate::inventory::Inventory;
use crate::metrics::ControllerMetrics;
use crate::registry::Registry;
use crate::roles::{Role, Roles};
use crate::store::{AuditRecord, Store};

/// The controller's service.
pub struct ControllerService {
    registry: Arc<Registry>,
    store: Arc<dyn Store>,
    distributor: Arc<Distributor>,
    inventory: Arc<Inventory>,
    metrics: Arc<ControllerMetrics>,
    roles: Roles,
    /// Bound on one routed call (a resize of a large filesystem takes a while).
    call_timeout: std::time::Duration,
}

/// The caller's verified certificate identity, and why it may not call at
/// all when its certificate is not a user's (roles are for people; an
/// agent's or a forged certificate gets no role, whatever its name).
fn identity<T>(request: &Request<T>) -> Result<(String, Option<ControllerError>), ControllerError> {
    let peer = roomy_tls::peer(request).ok_or(ControllerError::Unauthenticated)?;
    let wrong = match peer.kind {
        // Made by hand or by an older roomyctl, which did not reserve it.
        Some(Kind::User) if peer.identity.eq_ignore_ascii_case(CONTROLLER_NAME) => {
            Some("a user certificate with the controller's reserved name".to_string())
        }
        Some(Kind::User) => None,
        Some(kind) => Some(format!("a {kind} certificate")),
        None => Some(format!(
            "a certificate without a Roomy kind (URI SAN {}…)",
            roomy_tls::KIND_URI_PREFIX
        )),
    };
    let refusal = wrong.map(|what| ControllerError::NotAUser {
        identity: peer.identity.clone(),
        what,
    });
    Ok((peer.identity.clone(), refusal))
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
        distributor: Arc<Distributor>,
        inventory: Arc<Inventory>,
        metrics: Arc<ControllerMetrics>,
        roles: Roles,
        call_timeout: std::time::Duration,
    ) -> Self {
        ControllerService {
            registry,
            store,
            distributor,
            inventory,
            metrics,
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
        let (who, refusal) = identity(request)?;
        if let Some(e) = refusal {
            // Always audited, reads too: someone holds a certificate from
            // the fleet's CA that is not meant for roomyctl.
            self.audit(&who, action, target, 0, 0, Err(&e));
            return Err(e);
        }
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
        self.metrics.audit(&record.action, &record.result);
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
        let names = self.hosts_named(host)?;
        Ok(self.ask(&names, f).await)
    }

    /// Every registered host, or only `host` (empty: all), which must be
    /// registered.
    fn hosts_named(&self, host: String) -> Result<Vec<String>, ControllerError> {
        if host.is_empty() {
            return Ok(self.registry.names());
        }
        self.registry.client(&host)?;
        Ok(vec![host])
    }

    /// Ask `names` at once: the answers, and an error row for each host
    /// that did not answer in time or refused.
    async fn ask<T, F, Fut>(&self, names: &[String], f: F) -> (Vec<(String, T)>, Vec<HostError>)
    where
        F: Fn(roomy_proto::v1::agent_client::AgentClient<tonic::transport::Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        let mut answers = Vec::new();
        let mut errors = Vec::new();
        for (host, answer) in self.registry.fan_out(names, f).await {
            match answer {
                Ok(value) => answers.push((host, value)),
                Err(status) => errors.push(HostError {
                    host: host.clone(),
                    code: format!("{:?}", status.code()),
                    message: ControllerError::from_agent(&host, status).to_string(),
                }),
            }
        }
        (answers, errors)
    }

    /// When a policy last grew `target` on `host`, from the stored events.
    fn last_grown(&self, host: &str, target: &str) -> Option<i64> {
        let events = self.store.events(10_000, Some(host)).ok()?;
        events
            .iter()
            .rev()
            .find(|e| e.target == target && e.kind == EventKind::Grown as i32)
            .map(|e| e.time_ms)
    }

    /// Validate, check the cap against the containers it selects, store,
    /// send to the agents.
    async fn set_policy_checked(
        &self,
        mut policy: Policy,
        who: &str,
    ) -> Result<SetPolicyResponse, ControllerError> {
        roomy_policy::validate(&policy).map_err(|e| ControllerError::Invalid(e.to_string()))?;
        if let Some(old) = self
            .distributor
            .policies()
            .iter()
            .find(|p| p.name == policy.name)
        {
            if old.source == "config" {
                return Err(ControllerError::Invalid(format!(
                    "policy {} comes from the controller's config file: change it there and restart the controller, or pick another name",
                    policy.name
                )));
            }
        }
        let selector = policy.selector.clone().unwrap_or_default();
        let hosts: Vec<String> = self
            .registry
            .names()
            .into_iter()
            .filter(|h| roomy_policy::glob_match(&selector.host, h))
            .collect();
        let mut unchecked = Vec::new();
        let mut past = Vec::new();
        if policy.target_kind() == roomy_proto::v1::PolicyKind::Container {
            for (host, answer) in self
                .registry
                .fan_out(&hosts, |mut client| async move {
                    client
                        .inspect(InspectRequest::default())
                        .await
                        .map(Response::into_inner)
                })
                .await
            {
                match answer {
                    Ok(inspect) => {
                        past.extend(crate::policy::past_cap(&policy, &host, &inspect.containers))
                    }
                    Err(status) => unchecked.push(HostError {
                        host: host.clone(),
                        code: format!("{:?}", status.code()),
                        message: ControllerError::from_agent(&host, status).to_string(),
                    }),
                }
            }
        }
        if !past.is_empty() {
            return Err(ControllerError::Invalid(format!(
                "policy {}: the cap is below containers it selects: {}; raise --max, narrow the selector, or label those containers roomy.max-size=SIZE",
                policy.name,
                past.join(", ")
            )));
        }
        policy.source = "cli".into();
        policy.updated_by = who.to_string();
        policy.updated_ms = now_ms();
        let replaced = self.store.put_policy(&policy)?;
        self.distributor.reload()?;
        let message = format!(
            "{} policy {}: {}; {} host(s) selected",
            if replaced.is_some() {
                "replaced"
            } else {
                "created"
            },
            policy.name,
            roomy_policy::describe(&policy),
            hosts.len()
        );
        Ok(SetPolicyResponse {
            policy: Some(policy),
            message,
            unchecked,
        })
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
    type EventsStream =
        std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<Event, Status>> + Send>>;

    async fn events(
        &self,
        request: Request<EventsRequest>,
    ) -> Result<Response<Self::EventsStream>, Status> {
        self.authorize(&request, Role::Viewer, "events", "")?;
        let EventsRequest {
            limit,
            follow,
            host,
        } = request.into_inner();
        // Subscribe before reading the past, so nothing falls in between.
        let mut live = self.distributor.subscribe();
        let host = (!host.is_empty()).then_some(host);
        let past = self
            .store
            .events(
                if limit == 0 { 20 } else { limit.min(10_000) },
                host.as_deref(),
            )
            .map_err(Status::from)?;
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        tokio::spawn(async move {
            let mut seen: HashMap<String, u64> = HashMap::new();
            for e in past {
                seen.insert(e.host.clone(), e.seq);
                if tx.send(Ok(e)).await.is_err() {
                    return;
                }
            }
            if !follow {
                return;
            }
            loop {
                let e = tokio::select! {
                    e = live.recv() => e,
                    _ = tx.closed() => return,
                    // Followers must not hold the controller's stop open.
                    _ = roomy_daemon::signal::shutdown() => return,
                };
                match e {
                    Ok(e) => {
                        // An event may come twice (on etcd the leader hears
                        // it as it stores it and from the store's watch):
                        // each host's seqs only go up here.
                        let wanted = host.as_ref().is_none_or(|h| *h == e.host);
                        let new = seen.get(&e.host).is_none_or(|&s| e.seq > s);
                        if wanted && new {
                            seen.insert(e.host.clone(), e.seq);
                            if tx.send(Ok(e)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        let msg = format!("{n} events were skipped because this client read too slowly; `roomyctl events` shows them");
                        let _ = tx.send(Err(Status::data_loss(msg))).await;
                        return;
                    }
                    Err(_) => return,
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn list_policies(
        &self,
        request: Request<ListPoliciesRequest>,
    ) -> Result<Response<ListPoliciesResponse>, Status> {
        self.authorize(&request, Role::Viewer, "policy ls", "")?;
        let policies = self.store.policies().map_err(Status::from)?;
        Ok(Response::new(ListPoliciesResponse { policies }))
    }

    async fn set_policy(
        &self,
        request: Request<Policy>,
    ) -> Result<Response<SetPolicyResponse>, Status> {
        let name = request.get_ref().name.clone();
        let who = self.authorize(&request, Role::Operator, "policy set", &name)?;
        let result = self.set_policy_checked(request.into_inner(), &who).await;
        match &result {
            Ok(r) => self.audit(
                &who,
                "policy set",
                &name,
                0,
                r.policy.as_ref().map_or(0, |p| p.max_bytes),
                Ok(&r.message),
            ),
            Err(e) => self.audit(&who, "policy set", &name, 0, 0, Err(e)),
        }
        Ok(Response::new(result?))
    }

    async fn remove_policy(
        &self,
        request: Request<RemovePolicyRequest>,
    ) -> Result<Response<RemovePolicyResponse>, Status> {
        let name = request.get_ref().name.clone();
        let who = self.authorize(&request, Role::Operator, "policy rm", &name)?;
        let result = (|| {
            if let Some(p) = self.distributor.policies().iter().find(|p| p.name == name) {
                if p.source == "config" {
                    return Err(ControllerError::Invalid(format!(
                        "policy {name} comes from the controller's config file: remove it there and restart the controller"
                    )));
                }
            }
            self.store.remove_policy(&name)?.ok_or_else(|| {
                ControllerError::Invalid(format!(
                    "no policy {name:?}: `roomyctl policy ls` lists them"
                ))
            })?;
            self.distributor.reload()?;
            Ok(format!(
                "removed policy {name}; agents stop enforcing it at once"
            ))
        })();
        match &result {
            Ok(m) => self.audit(&who, "policy rm", &name, 0, 0, Ok(m)),
            Err(e) => self.audit(&who, "policy rm", &name, 0, 0, Err(e)),
        }
        Ok(Response::new(RemovePolicyResponse { message: result? }))
    }

    async fn explain_policy(
        &self,
        request: Request<TargetRequest>,
    ) -> Result<Response<Explanation>, Status> {
        self.authorize(&request, Role::Viewer, "policy explain", "")?;
        let target = parse_target(&request.into_inner().target)?;
        let policies = self.distributor.policies();
        let pool = self
            .call_agent(&target.host, |mut c| async move {
                c.inspect_pool(InspectPoolRequest {}).await
            })
            .await;
        let last = |name: &str| self.last_grown(&target.host, name);
        if target.container == crate::policy::POOL_TARGET {
            let pool = pool?;
            return Ok(Response::new(crate::policy::explain_pool(
                &policies,
                &target.host,
                &pool,
                last(crate::policy::POOL_TARGET),
                now_ms(),
            )));
        }
        let container = target.container.clone();
        let reply = self
            .call_agent(&target.host, |mut c| async move {
                c.inspect(InspectRequest { container }).await
            })
            .await?;
        let c = reply.containers.into_iter().next().ok_or_else(|| {
            ControllerError::Invalid(format!("{target}: the agent returned no container"))
        })?;
        Ok(Response::new(crate::policy::explain_container(
            &policies,
            &target.host,
            &c,
            pool.ok().as_ref(),
            last(&c.name),
            now_ms(),
        )))
    }

    async fn list_containers(
        &self,
        request: Request<ListContainersRequest>,
    ) -> Result<Response<ListContainersResponse>, Status> {
        self.authorize(&request, Role::Viewer, "ls", "")?;
        let ListContainersRequest { host, fresh } = request.into_inner();
        let names = self.hosts_named(host)?;
        // Kept lists where they are current; the other hosts are asked.
        let (mut kept, ask) = if fresh {
            (Default::default(), names.clone())
        } else {
            self.inventory.split(&names)
        };
        let (answers, errors) = self
            .ask(&ask, |mut client| async move {
                client
                    .inspect(InspectRequest::default())
                    .await
                    .map(Response::into_inner)
            })
            .await;
        for (host, answer) in answers {
            let list = self.inventory.offer(&host, answer);
            kept.insert(host, list);
        }
        // In the registry's order, as when every host was asked.
        let mut rows = Vec::with_capacity(kept.values().map(|l| l.len()).sum());
        for host in &names {
            for c in kept.get(host).into_iter().flat_map(|l| l.iter()) {
                rows.push(HostContainer {
                    host: host.clone(),
                    container: Some(c.clone()),
                });
            }
        }
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
            let reply = self
                .call_agent(&target.host, |mut c| async move {
                    c.resize(ResizeRequest { container, size }).await
                })
                .await?;
            self.inventory.changed(&target.host, reply.generation);
            Ok(reply)
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
            let reply = self
                .call_agent(&target.host, |mut c| async move {
                    c.repair(RepairRequest { container }).await
                })
                .await?;
            self.inventory.changed(&target.host, reply.generation);
            Ok::<_, ControllerError>(reply)
        }
        .await;
        match &result {
            Ok(r) => {
                let size = r.container.as_ref().map(|c| c.size_bytes()).unwrap_or(0);
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
