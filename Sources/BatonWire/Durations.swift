// Durations as the wire, the config and the reasons batond records spell them.

extension Duration {
    /// Whole milliseconds (toward zero).
    public var milliseconds: Int64 {
        components.seconds * 1000 + components.attoseconds / 1_000_000_000_000_000
    }

    /// In the config's own notation, with the largest unit that is exact: "500ms", "30s",
    /// "24h" (config errors and the reasons batond records speak the same way).
    public var spelled: String {
        for (unit, scale) in [("h", Int64(3_600_000)), ("m", 60_000), ("s", 1000)] where milliseconds % scale == 0 && milliseconds != 0 {
            return "\(milliseconds / scale)\(unit)"
        }
        return "\(milliseconds)ms"
    }
}
