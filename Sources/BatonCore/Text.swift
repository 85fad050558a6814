extension String {
    /// Without the given characters at either end (Foundation's trimming is slow on
    /// Linux and needs a CharacterSet).
    public func trimmed(of characters: String) -> String {
        var text = Substring(self)
        while let first = text.first, characters.contains(first) { text = text.dropFirst() }
        while let last = text.last, characters.contains(last) { text = text.dropLast() }
        return String(text)
    }
}

extension Duration {
    /// In the config's own notation, with the largest unit that is exact: "500ms", "30s",
    /// "24h" (config errors and the reasons batond records speak the same way).
    public var spelled: String {
        let milliseconds = components.seconds * 1000 + components.attoseconds / 1_000_000_000_000_000
        for (unit, scale) in [("h", Int64(3_600_000)), ("m", 60_000), ("s", 1000)] where milliseconds % scale == 0 && milliseconds != 0 {
            return "\(milliseconds / scale)\(unit)"
        }
        return "\(milliseconds)ms"
    }
}
