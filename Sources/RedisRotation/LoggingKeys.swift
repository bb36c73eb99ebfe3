/// The one list of logging metadata keys RedisRotation uses.
enum LoggingKeys {
    static let connectionID = "redis_connection_id"
    static let host = "redis_host"
    static let port = "redis_port"
    static let serverVersion = "redis_server_version"
    static let clientID = "redis_client_id"
    static let command = "redis_command"
    static let error = "redis_error"
    static let credentialVersion = "redis_credential_version"
}
