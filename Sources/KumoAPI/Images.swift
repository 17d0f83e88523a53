// Images a tenant makes (ECS ImportImage, CreateImage): a disk uploaded in raw or qcow2, or a stopped
// instance's disk flattened. An import boots with the kernel, initrd and command line of an image already there,
// or with the kernel and initrd in its own /boot.

/// `POST /v1/images/import?name=…&format=raw|qcow2[&boot_image=…][&public=true]`, the disk as the body.
public struct ImportImageRequest: Codable, Sendable, Equatable {
    public var name: String
    /// How to read the upload: "raw" or "qcow2" (never guessed from its bytes).
    public var format: String
    /// The image (id or name) whose kernel, initrd and command line the new image boots with; nil: the
    /// kernel and initrd in the disk's own filesystem (/vmlinuz, /boot/vmlinuz-VERSION, …).
    public var bootImage: String?
    /// An admin's import can be public (everyone's); a tenant's is its own.
    public var isPublic: Bool?
    public init(name: String, format: String, bootImage: String?, isPublic: Bool? = nil) {
        self.name = name; self.format = format; self.bootImage = bootImage; self.isPublic = isPublic
    }
    enum CodingKeys: String, CodingKey { case name, format, bootImage = "boot_image", isPublic = "public" }
}

/// `POST /v1/instances/{id}/image`: a stopped instance's root disk, flattened into a private image of its tenant.
public struct CreateImageRequest: Codable, Sendable, Equatable {
    public var name: String
    public init(name: String) { self.name = name }
}
