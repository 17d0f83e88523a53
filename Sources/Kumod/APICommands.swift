// The routes of run-command: RunCommand, SendFile and DescribeInvocationResults, per instance.
import Foundation
import Hummingbird
import KumoAPI

extension API {
    static func commandRoutes(_ router: Router<KumoContext>, _ service: Service) {
        router.post("/v1/instances/{id}/commands") { r, c in
            await handle(c) { p throws(APIError) in
                let i = try id(c)
                let req = try await decode(RunCommandRequest.self, r, c)
                return json(try await store(service) { () throws(APIError) in try service.runCommand(i, req, by: p) }, status: .accepted)
            }
        }
        router.get("/v1/instances/{id}/commands") { _, c in
            await handle(c) { p throws(APIError) in
                let i = try id(c)
                return json(InvocationList(invocations: try await store(service) { () throws(APIError) in try service.invocations(of: i, by: p) }))
            }
        }
        router.get("/v1/instances/{id}/commands/{invocation}") { _, c in
            await handle(c) { p throws(APIError) in
                let i = try id(c), inv = try parameter(c, "invocation")
                return json(try await store(service) { () throws(APIError) in try service.invocation(inv, of: i, by: p) })
            }
        }
        router.post("/v1/instances/{id}/files") { r, c in
            await handle(c) { p throws(APIError) in
                let i = try id(c)
                let req = try await decode(SendFileRequest.self, r, c)
                return json(try await store(service) { () throws(APIError) in try service.sendFile(i, req, by: p) }, status: .accepted)
            }
        }
    }
}
