// Compiles a target's seccomp allow lists (seccomp/*.list) to BPF at build time: seccomp-compile writes
// one Swift file of the programs, which the target is built with (docs/SANDBOX.md).
import PackagePlugin

@main
struct SeccompFilters: BuildToolPlugin {
    func createBuildCommands(context: PluginContext, target: Target) throws -> [Command] {
        guard let module = target as? SourceModuleTarget else { return [] }
        let lists = module.sourceFiles(withSuffix: "list").map(\.url).sorted { $0.path < $1.path }
        let out = context.pluginWorkDirectoryURL.appending(path: "SeccompPrograms.swift")
        return [
            .buildCommand(
                displayName: "Compiling seccomp filters of \(target.name)", executable: try context.tool(named: "seccomp-compile").url,
                arguments: [out.path] + lists.map(\.path), inputFiles: lists, outputFiles: [out])
        ]
    }
}
