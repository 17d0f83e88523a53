// Monitoring routes: an instance's and the host's time series, and the Prometheus exposition.
import Foundation
import Hummingbird
import KumoAPI

extension API {
    static func metricRoutes(_ router: Router<KumoContext>, _ service: Service) {
        @Sendable func query(_ r: Request) throws(APIError) -> MetricQuery {
            let params = r.uri.queryParameters.map { (String($0.key), String($0.value)) }
            return try MetricQuery.parse(params, now: Int(Date().timeIntervalSince1970))
        }
        @Sendable func reply(_ a: MetricAnswer) -> Response {
            switch a {
            case let .catalogue(c): return json(c)
            case let .data(d): return json(d)
            }
        }
        router.get("/v1/instances/{id}/metrics") { r, c in
            await handle(c) { p throws(APIError) in
                let i = try id(c), q = try query(r)
                return reply(try await store(service) { () throws(APIError) in try service.instanceMetrics(i, q, by: p) })
            }
        }
        router.get("/v1/host/metrics") { r, c in
            await handle(c) { p throws(APIError) in
                let q = try query(r)
                return reply(try await store(service) { () throws(APIError) in try service.hostMetrics(q, by: p) })
            }
        }
        router.get("/v1/alarms") { _, c in
            await handle(c) { p throws(APIError) in json(AlarmList(alarms: try await store(service) { () throws(APIError) in try service.listAlarms(by: p) })) }
        }
        router.post("/v1/alarms") { r, c in
            await handle(c) { p throws(APIError) in
                let req = try await decode(CreateAlarmRequest.self, r, c)
                return json(try await store(service) { () throws(APIError) in try service.createAlarm(req, by: p) }, status: .created)
            }
        }
        router.get("/v1/alarms/{id}") { _, c in
            await handle(c) { p throws(APIError) in
                let i = try id(c); return json(try await store(service) { () throws(APIError) in try service.describeAlarm(i, by: p) })
            }
        }
        router.delete("/v1/alarms/{id}") { _, c in
            await handle(c) { p throws(APIError) in
                let i = try id(c)
                try await store(service) { () throws(APIError) in try service.deleteAlarm(i, by: p) }
                return noContent
            }
        }
        router.get("/metrics") { _, c in
            await handle(c) { p throws(APIError) in
                let text = try await store(service) { () throws(APIError) in service.prometheusText(by: p) }
                return Response(
                    status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"], body: .init(byteBuffer: ByteBuffer(string: text)))
            }
        }
    }
}
