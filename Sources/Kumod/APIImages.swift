// The routes of images tenants make: one image, an import (the disk is the request body, streamed to a
// file in kumod's image store on the image lane, never held in memory) and CreateImage from an instance.
import Foundation
import Hummingbird
import KumoAPI

extension API {
    static func imageRoutes(_ router: Router<KumoContext>, _ service: Service) {
        router.get("/v1/images/{id}") { _, c in
            await handle(c) { p throws(APIError) in
                let i = try id(c)
                return json(try await store(service) { () throws(APIError) in service.visible(try service.imageRecord(i, by: p), to: p) })
            }
        }
        router.post("/v1/images/import") { r, c in
            await handle(c) { p throws(APIError) in
                let req = try importRequest(r.uri.queryParameters)
                // Everything that can be refused is, before a byte of the disk is read.
                let plan = try await store(service) { () throws(APIError) in try service.planImport(req, by: p) }
                let (fd, file) = try await image(service) { () throws(APIError) in try service.newUpload() }
                do {
                    var total: Int64 = 0
                    for try await chunk in r.body {
                        total += Int64(chunk.readableBytes)
                        guard total <= Service.maxImageBytes else {
                            throw APIError(code: "payload_too_large", message: "an upload of more than \(Service.maxImageBytes) bytes")
                        }
                        try await image(service) { () throws(APIError) in try writeAll(fd, chunk) }
                    }
                    close(fd)
                } catch {
                    close(fd)
                    unlink(file.path)
                    if let e = error as? APIError { throw e }
                    throw APIError(code: "invalid_argument", message: "the upload was cut short: \(error)")
                }
                let made = try await image(service) { () throws(APIError) in try service.importImage(plan, upload: file, by: p) }
                return json(service.visible(made, to: p), status: .created)
            }
        }
        router.post("/v1/instances/{id}/image") { r, c in
            await handle(c) { p throws(APIError) in
                let i = try id(c)
                let req = try await decode(CreateImageRequest.self, r, c)
                let made = try await image(service) { () throws(APIError) in try service.createImage(fromInstance: i, req, by: p) }
                return json(service.visible(made, to: p), status: .created)
            }
        }
    }

    static func image<T: Sendable>(_ s: Service, _ body: @escaping @Sendable () throws(APIError) -> T) async throws(APIError) -> T {
        try await s.imageLane.run(body)
    }

    /// The import's query: name, format, boot_image, public; any other parameter is refused.
    static func importRequest(_ q: Parameters) throws(APIError) -> ImportImageRequest {
        let known: Set<String> = ["name", "format", "boot_image", "public"]
        for (k, _) in q where !known.contains(String(k)) {
            throw APIError(code: "invalid_argument", message: "unknown query parameter \"\(Validate.escaped(String(k)))\" (name, format, boot_image, public)")
        }
        func one(_ k: String) throws(APIError) -> String {
            let all = q.getAll(k)
            guard all.count == 1, let v = all.first else {
                throw APIError(code: "invalid_argument", message: "query parameter \(k): give it once")
            }
            return String(v)
        }
        let isPublic = try Validate.flag(q.get("public").map { String($0) }, name: "public")
        let boot = q.getAll("boot_image").isEmpty ? nil : try one("boot_image")
        return ImportImageRequest(name: try one("name"), format: try one("format"), bootImage: boot, isPublic: isPublic)
    }

    static func writeAll(_ fd: Int32, _ buffer: ByteBuffer) throws(APIError) {
        let ok = buffer.withUnsafeReadableBytes { b -> Bool in
            var off = 0
            while off < b.count {
                let n = write(fd, b.baseAddress! + off, b.count - off)
                if n < 0 { if errno == EINTR { continue }; return false }
                off += n
            }
            return true
        }
        guard ok else { throw APIError(code: "insufficient_capacity", message: "cannot store the upload: \(String(cString: strerror(errno)))") }
    }
}
