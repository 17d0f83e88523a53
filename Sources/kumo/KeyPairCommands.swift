// kumo keypair: SSH key pairs whose public keys instances get through cloud-init.
import ArgumentParser
import Foundation
import Glibc
import KumoAPI

struct KeyPairCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keypair", abstract: "SSH key pairs: kumod keeps the public key and puts it in an instance's meta-data",
        subcommands: [List.self, Create.self, Import.self, Show.self, Delete.self])

    static func rows(_ ks: [KeyPair]) -> String {
        table(["ID", "NAME", "TENANT", "TYPE", "FINGERPRINT", "CREATED"], ks.map { [$0.id, $0.name, $0.tenant, $0.keyType, $0.fingerprint, $0.createdAt] })
    }

    struct List: ParsableCommand {
        @OptionGroup var global: Global
        mutating func run() throws {
            try perform {
                let r = try global.call("GET", "/v1/key-pairs", as: KeyPairList.self)
                global.emit(r) { KeyPairCommand.rows(r.keyPairs) }
            }
        }
    }

    struct Create: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Make an Ed25519 key pair; its private key is shown once (kumod does not keep it)")
        @OptionGroup var global: Global
        @Argument(help: "1-128 of A-Z, a-z, 0-9, '.', '_', '-'") var name: String
        @Option(help: "write the private key to this new file (mode 0600) instead of standard output") var privateKeyFile: String?
        mutating func run() throws {
            try perform {
                // The file is made first: a name that cannot be written must not cost a key pair whose private key is then lost.
                var fd: Int32 = -1
                if let f = privateKeyFile {
                    fd = open(f, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
                    guard fd >= 0 else { throw Failure.usage("cannot make \(f): \(String(cString: strerror(errno)))") }
                }
                defer { if fd >= 0 { close(fd) } }
                let k: KeyPair
                do { k = try global.call("POST", "/v1/key-pairs", body: CreateKeyPairRequest(name: name), as: KeyPair.self) } catch {
                    if let f = privateKeyFile { unlink(f) }
                    throw error
                }
                let secret = k.privateKey ?? ""
                if let f = privateKeyFile {
                    let bytes = Array(secret.utf8)
                    guard write(fd, bytes, bytes.count) == bytes.count, fsync(fd) == 0 else {
                        FileHandle.standardError.write(Data("kumo: writing \(f) failed; the private key follows\n\(secret)".utf8))
                        throw Failure.refused("cannot write \(f): \(String(cString: strerror(errno)))")
                    }
                    var shown = k
                    shown.privateKey = nil
                    global.emit(shown) { KeyPairCommand.rows([k]) + "\nprivate key written to \(f) (kumod does not keep it)" }
                } else {
                    global.emit(k) { KeyPairCommand.rows([k]) + "\n\(secret)" }
                    if global.output == .table { FileHandle.standardError.write(Data("kumo: save the private key above now: kumod does not keep it\n".utf8)) }
                }
            }
        }
    }

    struct Import: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Import a public key (an OpenSSH .pub file)")
        @OptionGroup var global: Global
        @Argument(help: "1-128 of A-Z, a-z, 0-9, '.', '_', '-'") var name: String
        @Option(help: "the public key file (- for standard input)") var publicKeyFile: String
        mutating func run() throws {
            try perform {
                let data = publicKeyFile == "-" ? FileHandle.standardInput.readDataToEndOfFile() : FileManager.default.contents(atPath: publicKeyFile)
                guard let data, data.count <= 16 << 10, let text = String(data: data, encoding: .utf8) else {
                    throw Failure.usage("cannot read \(publicKeyFile) as one public key (UTF-8, at most 16 KiB)")
                }
                let k = try global.call("POST", "/v1/key-pairs", body: CreateKeyPairRequest(name: name, publicKey: text), as: KeyPair.self)
                global.emit(k) { KeyPairCommand.rows([k]) }
            }
        }
    }

    struct Show: ParsableCommand {
        @OptionGroup var global: Global
        @Argument(help: "id or name") var keyPair: String
        mutating func run() throws {
            try perform {
                let k = try global.call("GET", "/v1/key-pairs/" + Global.segment(keyPair), as: KeyPair.self)
                global.emit(k) { KeyPairCommand.rows([k]) + "\n" + k.publicKey }
            }
        }
    }

    struct Delete: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Delete a key pair (instances made with it keep its public key)")
        @OptionGroup var global: Global
        @Argument(help: "id or name") var keyPair: String
        mutating func run() throws {
            try global.delete("/v1/key-pairs/" + Global.segment(keyPair), saying: "deleted key pair \(keyPair)")
        }
    }
}
