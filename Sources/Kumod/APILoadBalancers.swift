// Load balancers' routes (docs/LB.md): the balancers, their listeners, backend groups and backends, events.
import Foundation
import Hummingbird
import KumoAPI

extension API {
    static let loadBalancerRoutes: [(String, String)] = [
        ("GET", "/v1/load-balancers"), ("POST", "/v1/load-balancers"), ("GET", "/v1/load-balancers/{id}"), ("DELETE", "/v1/load-balancers/{id}"),
        ("GET", "/v1/load-balancers/{id}/events"), ("POST", "/v1/load-balancers/{id}/listeners"),
        ("DELETE", "/v1/load-balancers/{id}/listeners/{listener}"), ("POST", "/v1/load-balancers/{id}/backend-groups"),
        ("DELETE", "/v1/load-balancers/{id}/backend-groups/{group}"), ("POST", "/v1/load-balancers/{id}/backend-groups/{group}/backends"),
        ("DELETE", "/v1/load-balancers/{id}/backend-groups/{group}/backends/{backend}"),
    ]

    static func loadBalancerRoutes(_ router: Router<KumoContext>, _ service: Service) {
        router.get("/v1/load-balancers") { _, c in
            await handle(c) { p throws(APIError) in
                json(LoadBalancerList(loadBalancers: try await store(service) { () throws(APIError) in try service.listLoadBalancers(by: p) }))
            }
        }
        router.post("/v1/load-balancers") { r, c in
            await handle(c) { p throws(APIError) in
                let req = try await decode(CreateLoadBalancerRequest.self, r, c)
                return json(try await store(service) { () throws(APIError) in try service.createLoadBalancer(req, by: p) }, status: .created)
            }
        }
        router.get("/v1/load-balancers/{id}") { _, c in
            await handle(c) { p throws(APIError) in
                let id = try id(c)
                return json(try await store(service) { () throws(APIError) in try service.describeLoadBalancer(id, by: p) })
            }
        }
        router.delete("/v1/load-balancers/{id}") { _, c in
            await handle(c) { p throws(APIError) in
                let id = try id(c)
                try await store(service) { () throws(APIError) in try service.deleteLoadBalancer(id, by: p) }
                return noContent
            }
        }
        router.get("/v1/load-balancers/{id}/events") { _, c in
            await handle(c) { p throws(APIError) in
                let id = try id(c)
                return json(LoadBalancerEventList(events: try await store(service) { () throws(APIError) in try service.loadBalancerEvents(id, by: p) }))
            }
        }
        router.post("/v1/load-balancers/{id}/listeners") { r, c in
            await handle(c) { p throws(APIError) in
                let id = try id(c), req = try await decode(CreateListenerRequest.self, r, c)
                return json(try await store(service) { () throws(APIError) in try service.createListener(id, req, by: p) }, status: .created)
            }
        }
        router.delete("/v1/load-balancers/{id}/listeners/{listener}") { _, c in
            await handle(c) { p throws(APIError) in
                let id = try id(c), listener = try parameter(c, "listener")
                try await store(service) { () throws(APIError) in try service.deleteListener(id, listener: listener, by: p) }
                return noContent
            }
        }
        router.post("/v1/load-balancers/{id}/backend-groups") { r, c in
            await handle(c) { p throws(APIError) in
                let id = try id(c), req = try await decode(CreateBackendGroupRequest.self, r, c)
                return json(try await store(service) { () throws(APIError) in try service.createBackendGroup(id, req, by: p) }, status: .created)
            }
        }
        router.delete("/v1/load-balancers/{id}/backend-groups/{group}") { _, c in
            await handle(c) { p throws(APIError) in
                let id = try id(c), group = try parameter(c, "group")
                try await store(service) { () throws(APIError) in try service.deleteBackendGroup(id, group: group, by: p) }
                return noContent
            }
        }
        router.post("/v1/load-balancers/{id}/backend-groups/{group}/backends") { r, c in
            await handle(c) { p throws(APIError) in
                let id = try id(c), group = try parameter(c, "group"), req = try await decode(AddBackendRequest.self, r, c)
                return json(try await store(service) { () throws(APIError) in try service.addBackend(id, group: group, req, by: p) }, status: .created)
            }
        }
        router.delete("/v1/load-balancers/{id}/backend-groups/{group}/backends/{backend}") { _, c in
            await handle(c) { p throws(APIError) in
                let id = try id(c), group = try parameter(c, "group"), backend = try parameter(c, "backend")
                try await store(service) { () throws(APIError) in try service.deleteBackend(id, group: group, backend: backend, by: p) }
                return noContent
            }
        }
    }
}
