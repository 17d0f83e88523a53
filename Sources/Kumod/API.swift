// kumod's REST API (Hummingbird): JSON in and out, bearer tokens, the OpenAPI document served at
// /v1/openapi.yaml. Every route here is listed in `API.routes` and must be in openapi.yaml (a test
// checks both ways).
import Foundation
import Hummingbird
import HummingbirdWebSocket
import KumoAPI

public struct KumoContext: RequestContext, WebSocketRequestContext {
    public var coreContext: CoreRequestContextStorage
    public var principal: Store.Principal?
    public let webSocket = WebSocketHandlerReference<KumoContext>()
    public init(source: Source) { coreContext = .init(source: source) }
    public var maxUploadSize: Int { 1 << 20 }
}

public enum API {
    /// (method, OpenAPI path) of every route.
    public static let routes: [(String, String)] = coreRoutes + loadBalancerRoutes

    static let coreRoutes: [(String, String)] = [
        ("GET", "/v1/openapi.yaml"), ("GET", "/v1/health"),
        ("GET", "/v1/instance-types"), ("POST", "/v1/instance-types"),
        ("GET", "/v1/images"), ("POST", "/v1/images"),
        ("GET", "/v1/instances"), ("POST", "/v1/instances"),
        ("GET", "/v1/instances/{id}"), ("DELETE", "/v1/instances/{id}"),
        ("POST", "/v1/instances/{id}/start"), ("POST", "/v1/instances/{id}/stop"), ("POST", "/v1/instances/{id}/reboot"),
        ("GET", "/v1/instances/{id}/console"), ("GET", "/v1/instances/{id}/stats"),
        ("GET", "/v1/instances/{id}/translate"), ("GET", "/v1/instances/{id}/cpus"), ("PUT", "/v1/instances/{id}/cpus"),
        ("GET", "/v1/host/capacity"), ("PUT", "/v1/host/placement"), ("GET", "/v1/host/ksm"),
        ("GET", "/v1/host/balloon"), ("PUT", "/v1/host/balloon-policy"),
        ("DELETE", "/v1/instance-types/{name}"), ("DELETE", "/v1/images/{id}"),
        ("GET", "/v1/tenants"), ("POST", "/v1/tenants"), ("DELETE", "/v1/tenants/{tenant}"),
        ("GET", "/v1/tenants/{tenant}/tokens"), ("POST", "/v1/tenants/{tenant}/tokens"), ("DELETE", "/v1/tenants/{tenant}/tokens/{token}"),
        ("GET", "/v1/networks"), ("POST", "/v1/networks"), ("GET", "/v1/networks/{id}"), ("DELETE", "/v1/networks/{id}"),
        ("GET", "/v1/security-groups"), ("POST", "/v1/security-groups"), ("GET", "/v1/security-groups/{id}"),
        ("DELETE", "/v1/security-groups/{id}"), ("POST", "/v1/security-groups/{id}/rules"), ("DELETE", "/v1/security-groups/{id}/rules/{rule}"),
        ("PUT", "/v1/instances/{id}/nics/{index}/security-groups"),
        ("GET", "/v1/images/{id}"), ("POST", "/v1/images/import"), ("POST", "/v1/instances/{id}/image"),
        ("POST", "/v1/instances/{id}/commands"), ("GET", "/v1/instances/{id}/commands"), ("GET", "/v1/instances/{id}/commands/{invocation}"),
        ("POST", "/v1/instances/{id}/files"),
        ("GET", "/v1/key-pairs"), ("POST", "/v1/key-pairs"), ("GET", "/v1/key-pairs/{id}"), ("DELETE", "/v1/key-pairs/{id}"),
        ("POST", "/v1/instances/{id}/nics/{index}/port-forwards"), ("DELETE", "/v1/instances/{id}/nics/{index}/port-forwards/{forward}"),
        ("GET", "/v1/instances/{id}/metrics"), ("GET", "/v1/host/metrics"), ("GET", "/metrics"),
        ("GET", "/v1/alarms"), ("POST", "/v1/alarms"), ("GET", "/v1/alarms/{id}"), ("DELETE", "/v1/alarms/{id}"),
        ("POST", "/v1/instances/{id}/vnc"), ("GET", "/v1/vnc/{ticket}"),
    ]

    /// The OpenAPI document shipped with kumod.
    public static let openAPIDocument: String = {
        guard let url = Bundle.module.url(forResource: "openapi", withExtension: "yaml"),
            let text = try? String(contentsOf: url, encoding: .utf8)
        else { return "openapi: 3.0.3\n" }
        return text
    }()

    static let encoder: JSONEncoder = {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys]
        return e
    }()

    static func json<T: Encodable>(_ value: T, status: HTTPResponse.Status = .ok) -> Response {
        let data = (try? encoder.encode(value)) ?? Data("{}".utf8)
        return Response(status: status, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }

    static func status(for code: String) -> HTTPResponse.Status {
        switch code {
        case "unauthorized": return .unauthorized
        case "forbidden": return .forbidden
        case "not_found": return .notFound
        case "conflict", "incorrect_state", "idempotent_parameter_mismatch": return .conflict
        case "insufficient_capacity", "unavailable": return .serviceUnavailable
        case "internal", "launch_failed": return .internalServerError
        case "payload_too_large": return .contentTooLarge
        default: return .badRequest
        }
    }

    static func error(_ e: APIError) -> Response { json(ErrorBody(error: e), status: status(for: e.code)) }

    /// Reads a JSON body into `T`, with a message that names the field at fault.
    static func decode<T: Codable>(_ type: T.Type, _ request: Request, _ context: KumoContext) async throws(APIError) -> T {
        try decode(T.self, from: try await body(request, context))
    }

    /// The request's body, at most the context's upload limit.
    static func body(_ request: Request, _ context: KumoContext) async throws(APIError) -> Data {
        do { return Data(buffer: try await request.body.collect(upTo: context.maxUploadSize)) } catch {
            throw APIError(code: "payload_too_large", message: "request body over \(context.maxUploadSize) bytes")
        }
    }

    /// Strictly (StrictJSON.swift): a duplicate key or an unknown field is refused, naming it.
    static func decode<T: Codable>(_ type: T.Type, from body: Data, userInfo: [CodingUserInfoKey: any Sendable] = [:]) throws(APIError) -> T {
        let value = try decodeLeniently(T.self, from: body, userInfo: userInfo)
        try StrictJSON.check(body, decoded: value)
        return value
    }

    static func decodeLeniently<T: Decodable>(_ type: T.Type, from body: Data, userInfo: [CodingUserInfoKey: any Sendable]) throws(APIError) -> T {
        let decoder = JSONDecoder()
        decoder.userInfo = userInfo
        do { return try decoder.decode(T.self, from: body) } catch let DecodingError.keyNotFound(k, _) {
            throw APIError(code: "invalid_argument", message: "missing field \"\(k.stringValue)\"")
        } catch let DecodingError.typeMismatch(_, c) {
            throw APIError(code: "invalid_argument", message: "field \"\(c.codingPath.map(\.stringValue).joined(separator: "."))\": wrong type")
        } catch let DecodingError.valueNotFound(_, c) {
            throw APIError(code: "invalid_argument", message: "field \"\(c.codingPath.map(\.stringValue).joined(separator: "."))\" is null")
        } catch let DecodingError.dataCorrupted(c) {
            throw APIError(code: "invalid_argument", message: "body is not valid JSON for this request: \(c.debugDescription)")
        } catch {
            throw APIError(code: "invalid_argument", message: "body is not valid JSON for this request")
        }
    }

    /// Bearer-token authentication for everything under /v1 but the OpenAPI document and health.
    struct Auth: RouterMiddleware {
        typealias Context = KumoContext
        let service: Service
        func handle(_ request: Request, context: KumoContext, next: (Request, KumoContext) async throws -> Response) async throws -> Response {
            let path = request.uri.path
            // The console's pages, and a screen's WebSocket, whose one-time ticket is its credential (VNCTickets.swift).
            if path == "/v1/openapi.yaml" || path == "/v1/health" || WebConsole.isPublic(path) || path.hasPrefix("/v1/vnc/") {
                return try await next(request, context)
            }
            let token: String
            if let h = request.headers[.authorization], h.hasPrefix("Bearer "), h.count > 7 {
                token = String(h.dropFirst(7))
            } else if let t = API.webSocketToken(request) {
                token = t
            } else {
                return API.error(
                    APIError(code: "unauthorized", message: "send an API token: Authorization: Bearer TOKEN (kumod prints the admin token's file at start)"))
            }
            let store = service.store
            guard let p = try? await service.storeLane.run({ () throws(APIError) in try service.wrap { try store.principal(token: token) } }) else {
                return API.error(APIError(code: "unauthorized", message: "unknown API token"))
            }
            var c = context
            c.principal = p
            return try await next(request, c)
        }
    }

    /// A browser cannot set headers on a WebSocket, and the token must never go in a URL: the web console
    /// offers the subprotocols `kumo.console` and `kumo.token.TOKEN`, and kumod answers with the first.
    static func webSocketToken(_ request: Request) -> String? {
        guard let offered = request.headers[.secWebSocketProtocol] else { return nil }
        let items = offered.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
        guard items.contains(consoleProtocol), let t = items.first(where: { $0.hasPrefix("kumo.token.") }) else { return nil }
        return String(t.dropFirst("kumo.token.".count))
    }
    static let consoleProtocol = "kumo.console"

    /// Runs `body` for an authenticated principal, mapping APIError to its HTTP response.
    static func handle(_ context: KumoContext, _ body: (Store.Principal) async throws(APIError) -> Response) async -> Response {
        guard let p = context.principal else { return error(APIError(code: "unauthorized", message: "no API token")) }
        do { return try await body(p) } catch { return API.error(error) }
    }

    /// `body` on the store lane, or on the lane for work that waits on a VMM (WorkPool.swift).
    static func store<T: Sendable>(_ s: Service, _ body: @escaping @Sendable () throws(APIError) -> T) async throws(APIError) -> T {
        try await s.storeLane.run(body)
    }
    static func vmm<T: Sendable>(_ s: Service, _ body: @escaping @Sendable () throws(APIError) -> T) async throws(APIError) -> T {
        try await s.vmmLane.run(body)
    }

    static func id(_ context: KumoContext) throws(APIError) -> String { try parameter(context, "id") }

    static func parameter(_ context: KumoContext, _ name: String) throws(APIError) -> String {
        guard let v = context.parameters.get(name) else { throw APIError(code: "invalid_argument", message: "missing \(name) in the path") }
        return v
    }

    static let noContent = Response(status: .noContent)

    public static func router(_ service: Service) -> Router<KumoContext> {
        let router = Router(context: KumoContext.self)
        router.add(middleware: Auth(service: service))
        router.get("/v1/openapi.yaml") { _, _ in
            Response(status: .ok, headers: [.contentType: "application/yaml"], body: .init(byteBuffer: ByteBuffer(string: openAPIDocument)))
        }
        router.get("/v1/health") { _, _ in json(["status": "ok"]) }
        router.get("/v1/instance-types") { _, c in
            await handle(c) { _ throws(APIError) in json(["instance_types": try await store(service) { () throws(APIError) in try service.types() }]) }
        }
        router.post("/v1/instance-types") { r, c in
            await handle(c) { p throws(APIError) in
                try service.requireAdmin(p)
                let t = try await decode(InstanceType.self, r, c)
                return json(try await store(service) { () throws(APIError) in try service.addType(t, by: p) }, status: .created)
            }
        }
        router.get("/v1/images") { _, c in
            await handle(c) { p throws(APIError) in json(["images": try await store(service) { () throws(APIError) in try service.images(by: p) }]) }
        }
        router.post("/v1/images") { r, c in
            await handle(c) { p throws(APIError) in
                try service.requireAdmin(p)
                let req = try await decode(RegisterImageRequest.self, r, c)
                // The image lane: the root disk's checksum reads the whole file.
                return json(try await image(service) { () throws(APIError) in try service.registerImage(req, by: p) }, status: .created)
            }
        }
        router.post("/v1/instances") { r, c in
            await handle(c) { p throws(APIError) in
                let req = try await decode(RunInstancesRequest.self, r, c)
                return json(try await store(service) { () throws(APIError) in try service.runInstances(req, by: p) }, status: .accepted)
            }
        }
        router.get("/v1/instances") { r, c in
            await handle(c) { p throws(APIError) in
                let qp = r.uri.queryParameters
                var q = Service.ListQuery()
                for s in qp.getAll("state") {
                    guard let st = InstanceState(rawValue: String(s)) else {
                        throw APIError(
                            code: "invalid_argument", message: "state \"\(s)\": one of \(InstanceState.allCases.map(\.rawValue).joined(separator: ", "))")
                    }
                    q.states.append(st)
                }
                q.names = qp.getAll("name").map { String($0) }
                q.ids = qp.getAll("id").map { String($0) }
                q.types = qp.getAll("type").map { String($0) }
                if let l = qp.get("limit") {
                    guard let n = Int(l) else { throw APIError(code: "invalid_argument", message: "limit must be a whole number") }
                    q.limit = n
                }
                q.nextToken = qp.get("next_token").map { String($0) }
                let query = q
                return json(try await store(service) { () throws(APIError) in try service.describe(query, by: p) })
            }
        }
        router.get("/v1/instances/{id}") { _, c in
            await handle(c) { p throws(APIError) in
                let i = try id(c); return json(try await store(service) { () throws(APIError) in try service.show(i, by: p) })
            }
        }
        // Terminate waits (up to 2 s) for the VMM to go.
        router.delete("/v1/instances/{id}") { _, c in
            await handle(c) { p throws(APIError) in
                let i = try id(c); return json(try await vmm(service) { () throws(APIError) in try service.delete(i, by: p) })
            }
        }
        router.post("/v1/instances/{id}/start") { _, c in
            await handle(c) { p throws(APIError) in
                let i = try id(c)
                return json(try await store(service) { () throws(APIError) in try service.start(i, by: p) }, status: .accepted)
            }
        }
        router.post("/v1/instances/{id}/stop") { r, c in
            await handle(c) { p throws(APIError) in
                let force = try Validate.flag(r.uri.queryParameters.get("force").map { String($0) }, name: "force") ?? false
                let i = try id(c)
                return json(try await store(service) { () throws(APIError) in try service.stop(i, by: p, force: force) }, status: .accepted)
            }
        }
        router.post("/v1/instances/{id}/reboot") { _, c in
            await handle(c) { p throws(APIError) in
                let i = try id(c)
                return json(try await store(service) { () throws(APIError) in try service.reboot(i, by: p) }, status: .accepted)
            }
        }
        router.ws(
            "/v1/instances/{id}/console",
            shouldUpgrade: { r, c throws(APIError) in
                guard let p = c.principal else { throw APIError(code: "unauthorized", message: "no API token") }
                let i = try id(c)
                let target = try await store(service) { () throws(APIError) in try ConsoleBridge.target(service, id: i, by: p) }
                // A VMM just started creates its console socket within moments.
                for _ in 0..<50 where !FileManager.default.fileExists(atPath: target.socket) {
                    try? await Task.sleep(for: .milliseconds(100))
                }
                guard FileManager.default.fileExists(atPath: target.socket) else {
                    throw APIError(code: "incorrect_state", message: "the instance's VMM has not opened its console (see vmm.log in its work directory)")
                }
                guard r.headers[.upgrade]?.lowercased() == "websocket" else {
                    throw APIError(code: "invalid_argument", message: "this is a WebSocket endpoint (Upgrade: websocket); `kumo console ID` attaches to it")
                }
                return .upgrade(webSocketToken(r) != nil ? [.secWebSocketProtocol: consoleProtocol] : [:])
            },
            onUpgrade: { inbound, outbound, ws in
                guard let p = ws.requestContext.principal, let id = ws.requestContext.parameters.get("id"),
                    let target = try? await store(service, { () throws(APIError) in try ConsoleBridge.target(service, id: id, by: p) })
                else { return }
                try await ConsoleBridge.run(socket: target.socket, log: target.log, writes: service.vmmLane, inbound: inbound, outbound: outbound)
            })
        router.get("/v1/instances/{id}/stats") { _, c in
            await handle(c) { p throws(APIError) in
                let i = try id(c); return json(try await vmm(service) { () throws(APIError) in try service.stats(i, by: p) })
            }
        }
        router.get("/v1/instances/{id}/translate") { r, c in
            await handle(c) { p throws(APIError) in
                let q = r.uri.queryParameters
                guard let a = q.get("address") else { throw APIError(code: "invalid_argument", message: "missing query parameter address (hexadecimal GVA)") }
                guard let v = Int(q.get("vcpu") ?? "0") else { throw APIError(code: "invalid_argument", message: "vcpu must be a whole number") }
                let i = try id(c), address = String(a)
                return json(try await vmm(service) { () throws(APIError) in try service.translate(i, vcpu: v, address: address, by: p) })
            }
        }
        router.get("/v1/instances/{id}/cpus") { _, c in
            await handle(c) { p throws(APIError) in
                let i = try id(c); return json(try await vmm(service) { () throws(APIError) in try service.cpus(i, by: p) })
            }
        }
        router.put("/v1/instances/{id}/cpus") { r, c in
            await handle(c) { p throws(APIError) in
                let i = try id(c), req = try await decode(PinRequest.self, r, c)
                return json(try await vmm(service) { () throws(APIError) in try service.pin(i, req, by: p) })
            }
        }
        router.get("/v1/host/balloon") { _, c in
            await handle(c) { p throws(APIError) in json(try await store(service) { () throws(APIError) in try service.hostBalloons(by: p) }) }
        }
        router.put("/v1/host/balloon-policy") { r, c in
            await handle(c) { p throws(APIError) in
                // Fields left out keep the values in force (read, merged and written under one lock).
                let sent = try await body(r, c)
                return json(
                    try await store(service) { () throws(APIError) in
                        try service.updateBalloonPolicy(by: p) { base throws(APIError) in
                            try decode(BalloonPolicy.self, from: sent, userInfo: [BalloonPolicy.baseKey: base])
                        }
                    })
            }
        }
        router.get("/v1/host/ksm") { _, c in
            await handle(c) { p throws(APIError) in json(try await store(service) { () throws(APIError) in try service.hostKSM(by: p) }) }
        }
        router.get("/v1/host/capacity") { _, c in
            await handle(c) { _ throws(APIError) in json(try await store(service) { () throws(APIError) in try service.capacityReport() }) }
        }
        router.put("/v1/host/placement") { r, c in
            await handle(c) { p throws(APIError) in
                try service.requireAdmin(p)
                let policy = try await decode(PlacementPolicy.self, r, c)
                return json(
                    try await store(service) { () throws(APIError) in
                        try service.setPolicy(policy, by: p)
                        return try service.capacityReport()
                    })
            }
        }
        router.delete("/v1/instance-types/{name}") { _, c in
            await handle(c) { p throws(APIError) in
                let n = try parameter(c, "name")
                try await store(service) { () throws(APIError) in try service.deleteType(n, by: p) }
                return noContent
            }
        }
        router.delete("/v1/images/{id}") { _, c in
            await handle(c) { p throws(APIError) in
                let i = try id(c)
                try await store(service) { () throws(APIError) in try service.deleteImage(i, by: p) }
                return noContent
            }
        }
        tenancyRoutes(router, service)
        networkRoutes(router, service)
        securityGroupRoutes(router, service)
        keyPairRoutes(router, service)
        imageRoutes(router, service)
        commandRoutes(router, service)
        metricRoutes(router, service)
        displayRoutes(router, service)
        loadBalancerRoutes(router, service)
        WebConsole.routes(router)
        return router
    }

    /// Tenants and their tokens (admin).
    static func tenancyRoutes(_ router: Router<KumoContext>, _ service: Service) {
        router.get("/v1/tenants") { _, c in
            await handle(c) { p throws(APIError) in json(["tenants": try await store(service) { () throws(APIError) in try service.tenants(by: p) }]) }
        }
        router.post("/v1/tenants") { r, c in
            await handle(c) { p throws(APIError) in
                try service.requireAdmin(p)
                let req = try await decode(CreateTenantRequest.self, r, c)
                return json(try await store(service) { () throws(APIError) in try service.createTenant(req, by: p) }, status: .created)
            }
        }
        router.delete("/v1/tenants/{tenant}") { _, c in
            await handle(c) { p throws(APIError) in
                let t = try parameter(c, "tenant")
                try await store(service) { () throws(APIError) in try service.deleteTenant(t, by: p) }
                return noContent
            }
        }
        router.get("/v1/tenants/{tenant}/tokens") { _, c in
            await handle(c) { p throws(APIError) in
                let t = try parameter(c, "tenant")
                return json(["tokens": try await store(service) { () throws(APIError) in try service.tokens(of: t, by: p) }])
            }
        }
        router.post("/v1/tenants/{tenant}/tokens") { r, c in
            await handle(c) { p throws(APIError) in
                try service.requireAdmin(p)
                let t = try parameter(c, "tenant"), req = try await decode(CreateTokenRequest.self, r, c)
                return json(try await store(service) { () throws(APIError) in try service.issueToken(for: t, req, by: p) }, status: .created)
            }
        }
        router.delete("/v1/tenants/{tenant}/tokens/{token}") { _, c in
            await handle(c) { p throws(APIError) in
                let t = try parameter(c, "tenant"), k = try parameter(c, "token")
                try await store(service) { () throws(APIError) in try service.revokeToken(k, of: t, by: p) }
                return noContent
            }
        }
    }

    static func networkRoutes(_ router: Router<KumoContext>, _ service: Service) {
        router.get("/v1/networks") { _, c in
            await handle(c) { p throws(APIError) in
                json(NetworkList(networks: try await store(service) { () throws(APIError) in try service.listNetworks(by: p) }))
            }
        }
        router.post("/v1/networks") { r, c in
            await handle(c) { p throws(APIError) in
                let req = try await decode(CreateNetworkRequest.self, r, c)
                return json(try await store(service) { () throws(APIError) in try service.createNetwork(req, by: p) }, status: .created)
            }
        }
        router.get("/v1/networks/{id}") { _, c in
            await handle(c) { p throws(APIError) in
                let id = try id(c)
                return json(try await store(service) { () throws(APIError) in try service.describeNetwork(id, by: p) })
            }
        }
        router.delete("/v1/networks/{id}") { _, c in
            await handle(c) { p throws(APIError) in
                let id = try id(c)
                try await store(service) { () throws(APIError) in try service.deleteNetwork(id, by: p) }
                return noContent
            }
        }
    }

    static func keyPairRoutes(_ router: Router<KumoContext>, _ service: Service) {
        router.get("/v1/key-pairs") { _, c in
            await handle(c) { p throws(APIError) in
                json(KeyPairList(keyPairs: try await store(service) { () throws(APIError) in try service.listKeyPairs(by: p) }))
            }
        }
        router.post("/v1/key-pairs") { r, c in
            await handle(c) { p throws(APIError) in
                let req = try await decode(CreateKeyPairRequest.self, r, c)
                return json(try await store(service) { () throws(APIError) in try service.createKeyPair(req, by: p) }, status: .created)
            }
        }
        router.get("/v1/key-pairs/{id}") { _, c in
            await handle(c) { p throws(APIError) in
                let id = try id(c)
                return json(try await store(service) { () throws(APIError) in try service.describeKeyPair(id, by: p) })
            }
        }
        router.delete("/v1/key-pairs/{id}") { _, c in
            await handle(c) { p throws(APIError) in
                let id = try id(c)
                try await store(service) { () throws(APIError) in try service.deleteKeyPair(id, by: p) }
                return noContent
            }
        }
    }

    static func securityGroupRoutes(_ router: Router<KumoContext>, _ service: Service) {
        router.get("/v1/security-groups") { _, c in
            await handle(c) { p throws(APIError) in
                json(SecurityGroupList(securityGroups: try await store(service) { () throws(APIError) in try service.listSecurityGroups(by: p) }))
            }
        }
        router.post("/v1/security-groups") { r, c in
            await handle(c) { p throws(APIError) in
                let req = try await decode(CreateSecurityGroupRequest.self, r, c)
                return json(try await store(service) { () throws(APIError) in try service.createSecurityGroup(req, by: p) }, status: .created)
            }
        }
        router.get("/v1/security-groups/{id}") { _, c in
            await handle(c) { p throws(APIError) in
                let id = try id(c)
                return json(try await store(service) { () throws(APIError) in try service.describeSecurityGroup(id, by: p) })
            }
        }
        router.delete("/v1/security-groups/{id}") { _, c in
            await handle(c) { p throws(APIError) in
                let id = try id(c)
                try await store(service) { () throws(APIError) in try service.deleteSecurityGroup(id, by: p) }
                return noContent
            }
        }
        router.post("/v1/security-groups/{id}/rules") { r, c in
            await handle(c) { p throws(APIError) in
                let id = try id(c), req = try await decode(AddSecurityGroupRuleRequest.self, r, c)
                return json(try await store(service) { () throws(APIError) in try service.addSecurityGroupRule(id, req, by: p) }, status: .created)
            }
        }
        router.delete("/v1/security-groups/{id}/rules/{rule}") { _, c in
            await handle(c) { p throws(APIError) in
                let id = try id(c), rule = try parameter(c, "rule")
                try await store(service) { () throws(APIError) in try service.deleteSecurityGroupRule(id, rule: rule, by: p) }
                return noContent
            }
        }
        router.put("/v1/instances/{id}/nics/{index}/security-groups") { r, c in
            await handle(c) { p throws(APIError) in
                let id = try id(c), index = try nicIndex(c)
                let req = try await decode(SetSecurityGroupsRequest.self, r, c)
                return json(try await store(service) { () throws(APIError) in try service.setSecurityGroups(id, nic: index, req, by: p) })
            }
        }
        router.post("/v1/instances/{id}/nics/{index}/port-forwards") { r, c in
            await handle(c) { p throws(APIError) in
                let id = try id(c), index = try nicIndex(c)
                let req = try await decode(CreatePortForwardRequest.self, r, c)
                return json(try await store(service) { () throws(APIError) in try service.createPortForward(id, nic: index, req, by: p) }, status: .created)
            }
        }
        router.delete("/v1/instances/{id}/nics/{index}/port-forwards/{forward}") { _, c in
            await handle(c) { p throws(APIError) in
                let id = try id(c), index = try nicIndex(c), forward = try parameter(c, "forward")
                try await store(service) { () throws(APIError) in try service.deletePortForward(id, nic: index, forward: forward, by: p) }
                return noContent
            }
        }
    }

    /// A NIC's index in the path: 0 to 3, digits only.
    static func nicIndex(_ c: KumoContext) throws(APIError) -> Int {
        let text = try parameter(c, "index")
        guard let index = Int(text), (0..<Service.maxNICs).contains(index), text.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) else {
            throw APIError(code: "invalid_argument", message: "NIC index must be 0 to \(Service.maxNICs - 1)")
        }
        return index
    }
}
