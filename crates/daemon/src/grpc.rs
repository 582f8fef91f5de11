//! What both gRPC servers serve beside their own service.

use tonic::transport::server::Router;

/// The services reflection lists besides the server's own: health and
/// reflection itself, in both versions (as grpc-go's servers do).
const ALSO_SERVED: [&str; 3] = [
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// Adds server reflection listing `service`, the health service and
/// reflection, in both versions clients speak: v1, and v1alpha, the only one
/// that grpcio-reflection's client, older grpcurl releases and many IDE
/// plugins know (without it they get UNIMPLEMENTED and cannot list or
/// describe). Only what this server serves is listed: the descriptor set
/// holds both Roomy services, and a client would otherwise call a service
/// that is not there.
pub fn with_reflection<L>(
    router: Router<L>,
    service: &str,
) -> Result<Router<L>, tonic_reflection::server::Error> {
    let builder = || {
        let mut builder = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(roomy_proto::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .with_service_name(service);
        for name in ALSO_SERVED {
            builder = builder.with_service_name(name);
        }
        builder
    };
    Ok(router
        .add_service(builder().build_v1()?)
        .add_service(builder().build_v1alpha()?))
}
