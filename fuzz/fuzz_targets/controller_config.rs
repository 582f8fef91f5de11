//! The controller's config file, which operators write by hand: it parses
//! into a config whose hosts, policies and webhooks all validate, or it is
//! refused with a message. Never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use roomy_controller::config::Config;

fuzz_target!(|text: &str| {
    let Ok(config) = Config::parse(text) else {
        return;
    };
    for h in &config.hosts {
        assert!(roomy_proto::valid_host_name(&h.name));
    }
    for p in &config.policies {
        p.to_policy().expect("a loaded config's policies are valid");
    }
});
