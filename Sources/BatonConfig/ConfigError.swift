/// A configuration error that names the file, the key and the line.
public struct ConfigError: Error, Sendable, Equatable, CustomStringConvertible {
    public var file: String
    public var key: String?
    public var line: Int?
    public var column: Int?
    public var message: String

    public init(file: String, key: String? = nil, line: Int? = nil, column: Int? = nil, message: String) {
        self.file = file
        self.key = key
        self.line = line
        self.column = column
        self.message = message
    }

    /// `FILE:LINE[:COL]: KEY: MESSAGE`, the shape compilers use, so editors can jump to it.
    public var description: String {
        var location = file
        if let line { location += ":\(line)" }
        if let column { location += ":\(column)" }
        return "\(location): \(key.map { "\($0): " } ?? "")\(message)"
    }
}
