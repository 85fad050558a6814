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
