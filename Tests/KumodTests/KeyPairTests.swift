import Foundation
import Hummingbird
import HummingbirdTesting
import KumoAPI
import TestSupport
import Testing

@testable import Kumod

/// SSH key pairs: public keys checked field by field and fingerprinted as OpenSSH does (against the real
/// ssh-keygen), made and imported through the API per tenant, and carried into an instance's seed.
@Suite(.ownThreads) struct KeyPairTests {
    static let keygen = "/usr/bin/ssh-keygen"

    /// A fresh key of `type` from ssh-keygen: (public key line, private key file).
    static func generate(_ type: String, bits: Int? = nil, in dir: URL) throws -> (String, URL) {
        let file = dir.appendingPathComponent("\(type)-\(bits ?? 0)-\(UUID().uuidString.prefix(8))")
        _ = try hostTool(Self.keygen, ["-q", "-t", type, "-N", "", "-C", "me@laptop"] + (bits.map { ["-b", "\($0)"] } ?? []) + ["-f", file.path])
        return (try String(contentsOf: file.appendingPathExtension("pub"), encoding: .utf8), file)
    }

    /// ssh-keygen's own fingerprint of a public key line.
    static func fingerprint(of line: String, in dir: URL) throws -> String {
        let f = dir.appendingPathComponent("fp-\(UUID().uuidString.prefix(8)).pub")
        try line.write(to: f, atomically: true, encoding: .utf8)
        let out = try hostTool(Self.keygen, ["-l", "-E", "sha256", "-f", f.path]).output
        return String(out.split(separator: " ")[1])
    }

    @Test func publicKeysAreTakenAsOpenSSHReadsThem() throws {
        let dir = try tempDir("keys")
        defer { try? FileManager.default.removeItem(at: dir) }
        for (type, bits, name) in [
            ("ed25519", nil, "ssh-ed25519"), ("rsa", 2048, "ssh-rsa"), ("rsa", 3072, "ssh-rsa"), ("ecdsa", 256, "ecdsa-sha2-nistp256"),
            ("ecdsa", 384, "ecdsa-sha2-nistp384"), ("ecdsa", 521, "ecdsa-sha2-nistp521"),
        ] as [(String, Int?, String)] {
            let (line, _) = try Self.generate(type, bits: bits, in: dir)
            let key = try SSHPublicKey(line: line)
            #expect(key.type == name)
            #expect(key.fingerprint == (try Self.fingerprint(of: line, in: dir)), "\(type) \(bits ?? 0)")
            // The line kumod writes is the same key to OpenSSH, with the key pair's name as comment.
            let written = key.line(comment: "laptop")
            #expect(written.hasSuffix(" laptop") && written.split(separator: " ").count == 3)
            #expect(try Self.fingerprint(of: written, in: dir) == key.fingerprint)
        }
        let (ed, _) = try Self.generate("ed25519", in: dir)
        let parts = ed.split(separator: " ")
        let blob = Data(base64Encoded: String(parts[1]))!
        let (small, _) = try Self.generate("rsa", bits: 1024, in: dir)
        func refused(_ line: String, _ why: String) {
            #expect(throws: APIError.self, "\(why)") { try SSHPublicKey(line: line) }
            do { _ = try SSHPublicKey(line: line) } catch { #expect(error.message.contains(why), "\(error.message)") }
        }
        refused(small, "1024 bits")
        refused("ssh-dss AAAAB3NzaC1kc3MAAACBAP", "is not taken")
        refused("ssh-rsa \(parts[1])", "not a ssh-rsa key")
        refused("ssh-ed25519 \((blob + Data([0])).base64EncodedString())", "bytes after the key")
        refused("ssh-ed25519 \(blob.prefix(blob.count - 1).base64EncodedString())", "32 bytes")
        refused("ssh-ed25519 !!!notbase64", "not base64")
        refused("from=\"10.0.0.1\" \(ed)", "is not taken")
        refused("\(ed.trimmingCharacters(in: .newlines))\n\(ed)", "one key on one line")
        refused("ssh-ed25519", "TYPE BASE64")
        refused("", "TYPE BASE64")
        refused("ssh-ed25519 " + String(repeating: "A", count: 17000), "at most 16384")
        refused("ssh-\u{202E}ed25519 AAAA", "not taken")
    }

    @Test func keyPairsPerTenantThroughTheAPI() async throws {
        let f = try Fixture()
        let dir = try tempDir("keys")
        defer { try? FileManager.default.removeItem(at: dir) }
        try await f.app.test(.router) { c in
            try await c.execute(uri: "/v1/images", method: .post, headers: auth(f.admin), body: body(#"{"name": "tiny", "kernel": "\#(f.kernel.path)"}"#)) {
                #expect($0.status == .created)
            }
            // Made by kumod: the private key once, a key OpenSSH reads and whose public half is the one kept.
            let made = try await c.execute(uri: "/v1/key-pairs", method: .post, headers: auth(f.alice), body: body(#"{"name": "laptop"}"#)) { r in
                #expect(r.status == .created, "\(String(buffer: r.body))")
                return try decode(KeyPair.self, r.body)
            }
            let secret = try #require(made.privateKey)
            #expect(made.id.hasPrefix("kp-") && made.tenant == "alice" && made.keyType == "ssh-ed25519" && made.publicKey.hasSuffix(" laptop"))
            let file = dir.appendingPathComponent("laptop")
            _ = FileManager.default.createFile(atPath: file.path, contents: Data(secret.utf8), attributes: [.posixPermissions: 0o600])
            let derived = try hostTool(Self.keygen, ["-y", "-f", file.path]).output.split(whereSeparator: \.isWhitespace).prefix(2)
            #expect(derived == made.publicKey.split(separator: " ").prefix(2), "the private key is the pair of the public one kept")
            #expect(try Self.fingerprint(of: made.publicKey, in: dir) == made.fingerprint)
            // No scratch directory is left with the private key in it.
            #expect(try FileManager.default.contentsOfDirectory(atPath: f.dir.path).allSatisfy { !$0.hasPrefix("keygen-") })
            // Listed and shown without the private key, to its tenant (and the admin) only.
            try await c.execute(uri: "/v1/key-pairs", method: .get, headers: auth(f.alice)) { r in
                let l = try decode(KeyPairList.self, r.body)
                #expect(l.keyPairs.map(\.id) == [made.id] && l.keyPairs.allSatisfy { $0.privateKey == nil })
                #expect(!String(buffer: r.body).contains("PRIVATE"))
            }
            try await c.execute(uri: "/v1/key-pairs", method: .get, headers: auth(f.bob)) { r throws in
                #expect(try decode(KeyPairList.self, r.body).keyPairs.isEmpty)
            }
            for ref in [made.id, "laptop"] {
                try await c.execute(uri: "/v1/key-pairs/\(ref)", method: .get, headers: auth(f.bob)) { #expect($0.status == .notFound) }
            }
            try await c.execute(uri: "/v1/key-pairs/\(made.id)", method: .get, headers: auth(f.admin)) { r in
                #expect(r.status == .ok && parse(KeyPair.self, r.body)?.privateKey == nil)
            }
            // Imported: another tenant may use the same name; bad input is refused and nothing is recorded.
            let (pub, _) = try Self.generate("ecdsa", bits: 256, in: dir)
            let imported = try await c.execute(
                uri: "/v1/key-pairs", method: .post, headers: auth(f.bob),
                body: body(String(decoding: try JSONEncoder().encode(CreateKeyPairRequest(name: "laptop", publicKey: pub)), as: UTF8.self))
            ) { r in
                #expect(r.status == .created, "\(String(buffer: r.body))")
                return try decode(KeyPair.self, r.body)
            }
            #expect(imported.privateKey == nil && imported.keyType == "ecdsa-sha2-nistp256" && imported.tenant == "bob")
            #expect(imported.fingerprint == (try Self.fingerprint(of: pub, in: dir)))
            for (payload, status, says) in [
                (#"{"name": "laptop"}"#, HTTPResponse.Status.conflict, "you have a key pair named laptop"),
                (#"{"name": "kp-1"}"#, .badRequest, "kp- starts key pair ids"),
                (#"{"name": "a b"}"#, .badRequest, "key pair name"),
                (#"{"name": "desk", "public_key": "ssh-rsa AAAA"}"#, .badRequest, "public_key"),
                (#"{"name": "desk", "colour": "red"}"#, .badRequest, "colour"),
            ] {
                try await c.execute(uri: "/v1/key-pairs", method: .post, headers: auth(f.alice), body: body(payload)) { r in
                    #expect(r.status == status && String(buffer: r.body).contains(says), "\(payload): \(r.status) \(String(buffer: r.body))")
                }
            }
            try await c.execute(uri: "/v1/key-pairs", method: .get, headers: auth(f.alice)) { r throws in
                #expect(try decode(KeyPairList.self, r.body).keyPairs.count == 1)
            }
            try await c.execute(uri: "/v1/key-pairs", method: .get, headers: auth(f.admin)) { r throws in
                #expect(Set(try decode(KeyPairList.self, r.body).keyPairs.map(\.id)) == [made.id, imported.id])
            }
            // An instance made with a key pair: the name on it, the public key in its seed's meta-data.
            let run = try await c.execute(
                uri: "/v1/instances", method: .post, headers: auth(f.alice), body: body(#"{"type": "kumo.small", "image": "tiny", "key_pair": "laptop"}"#)
            ) { r in
                #expect(r.status == .accepted, "\(String(buffer: r.body))")
                return try decode(RunInstancesResponse.self, r.body)
            }
            let id = run.instances[0].id
            #expect(run.instances[0].keyPair == "laptop")
            _ = try await waitState(c, id, f.alice, .running)
            let seed = f.dir.appendingPathComponent("instances/\(id)/seed.iso").path
            let meta = try NoCloudTests.isoinfo(["-R", "-i", seed, "-x", "/meta-data"])
            #expect(meta.contains("public-keys:\n  - \"\(made.publicKey)\"\n"), "\(meta)")
            // Another tenant's key pair is not found, and no instance is made.
            let before = try f.store.instances(Store.Filter(), limit: 100).0.count
            for ref in [made.id, imported.id + "x"] {
                try await c.execute(
                    uri: "/v1/instances", method: .post, headers: auth(f.bob), body: body(#"{"type": "kumo.small", "image": "tiny", "key_pair": "\#(ref)"}"#)
                ) { r in
                    #expect(r.status == .notFound && String(buffer: r.body).contains("no key pair"), "\(String(buffer: r.body))")
                }
            }
            #expect(try f.store.instances(Store.Filter(), limit: 100).0.count == before)
            // Deleted: only by its tenant (or an admin); the instance keeps the key at its next launch.
            try await c.execute(uri: "/v1/key-pairs/\(made.id)", method: .delete, headers: auth(f.bob)) { #expect($0.status == .notFound) }
            try await c.execute(uri: "/v1/key-pairs/laptop", method: .delete, headers: auth(f.alice)) { #expect($0.status == .noContent) }
            try await c.execute(uri: "/v1/key-pairs/laptop", method: .get, headers: auth(f.alice)) { #expect($0.status == .notFound) }
            try await c.execute(uri: "/v1/key-pairs/laptop", method: .get, headers: auth(f.bob)) { #expect($0.status == .ok) }
            try await c.execute(uri: "/v1/instances/\(id)/stop", method: .post, headers: auth(f.alice)) { #expect($0.status == .accepted) }
            _ = try await waitState(c, id, f.alice, .stopped)
            try FileManager.default.removeItem(atPath: seed)
            try await c.execute(uri: "/v1/instances/\(id)/start", method: .post, headers: auth(f.alice)) { #expect($0.status == .accepted) }
            _ = try await waitState(c, id, f.alice, .running)
            #expect(try NoCloudTests.isoinfo(["-R", "-i", seed, "-x", "/meta-data"]).contains(made.publicKey))
            try await c.execute(uri: "/v1/instances/\(id)", method: .delete, headers: auth(f.alice)) { #expect($0.status == .ok) }
        }
    }

    @Test func metaDataListsTheKeys() {
        let seed = NoCloudSeed(instanceID: "i-1", name: "web", userData: nil, nics: [], publicKeys: ["ssh-ed25519 AAAA a", "ssh-rsa BBBB b"])
        #expect(seed.metaData == "instance-id: i-1\nlocal-hostname: web\npublic-keys:\n  - \"ssh-ed25519 AAAA a\"\n  - \"ssh-rsa BBBB b\"\n")
        #expect(NoCloudSeed(instanceID: "i-1", name: "web", userData: nil, nics: []).metaData == "instance-id: i-1\nlocal-hostname: web\n")
    }
}
