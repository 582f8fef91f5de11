//! roomy-controller: the fleet controller. Not built yet: the host
//! registry, fan-out, routing, mTLS and audit arrive with the controller
//! issue. Until then this binary says so and exits non-zero rather than
//! pretending to serve.

fn main() -> std::process::ExitCode {
    eprintln!(
        "roomy-controller: not implemented yet; use roomy-agent on each host and `roomyctl --agent unix:///run/roomy/agent.sock`"
    );
    std::process::ExitCode::from(2)
}
