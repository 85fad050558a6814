import BatonCore
import Foundation

/// A table for people: a bold header on a terminal, columns padded to their widest cell,
/// `-` for what has no value.
struct Table {
    let columns: [String]
    private(set) var rows: [[String]] = []

    init(_ columns: String...) { self.columns = columns }

    mutating func add(_ cells: String?...) { add(cells) }

    mutating func add(_ cells: [String?]) {
        rows.append(cells.map { $0.flatMap { $0.isEmpty ? nil : $0 } ?? "-" })
    }

    func print() {
        var widths = columns.map(\.count)
        for row in rows {
            for (index, cell) in row.enumerated() where index < widths.count { widths[index] = max(widths[index], cell.count) }
        }
        func line(_ cells: [String]) -> String {
            cells.enumerated().map { index, cell in
                index == cells.count - 1 ? cell : cell.padding(toLength: widths[index], withPad: " ", startingAt: 0)
            }.joined(separator: "  ")
        }
        Terminal.print(Terminal.paint(line(columns), .bold))
        for row in rows { Terminal.print(line(row)) }
    }
}

enum Format {
    /// `850ms`, `4.2s`, `3m12s`, `2h05m`, `3d4h`.
    static func duration(milliseconds ms: Int64) -> String {
        if ms < 1000 { return "\(max(ms, 0))ms" }
        if ms < 60_000 { return String(format: "%.1fs", Double(ms) / 1000) }
        let seconds = ms / 1000
        if seconds < 3600 { return "\(seconds / 60)m\(String(format: "%02d", seconds % 60))s" }
        if seconds < 86_400 { return "\(seconds / 3600)h\(String(format: "%02d", seconds / 60 % 60))m" }
        return "\(seconds / 86_400)d\(seconds / 3600 % 24)h"
    }

    /// How long ago `time` was, e.g. `3m12s ago`.
    static func ago(_ time: Timestamp, now: Timestamp = .now()) -> String {
        "\(duration(milliseconds: now.milliseconds - time.milliseconds)) ago"
    }

    /// Since `time`, without "ago": an uptime.
    static func since(_ time: Timestamp, now: Timestamp = .now()) -> String {
        duration(milliseconds: now.milliseconds - time.milliseconds)
    }

    /// A handoff's gap: `1.8ms`, `0.25ms`.
    static func gap(_ ms: Double?) -> String? {
        guard let ms else { return nil }
        return ms < 10 ? String(format: "%.2fms", ms) : String(format: "%.0fms", ms)
    }

    /// `512 B`, `1.5 KiB`, `12.3 MiB`.
    static func bytes(_ count: Int64) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB"]
        var value = Double(count)
        var unit = 0
        while value >= 1024 && unit < units.count - 1 {
            value /= 1024
            unit += 1
        }
        return unit == 0 ? "\(count) B" : String(format: "%.1f %@", value, units[unit])
    }

    /// The time of day of a timestamp, local, e.g. `22:42:07`, with the date when it is
    /// not today.
    static func clock(_ time: Timestamp) -> String {
        let date = Date(timeIntervalSince1970: time.seconds)
        let formatter = DateFormatter()
        formatter.dateFormat = Calendar.current.isDateInToday(date) ? "HH:mm:ss" : "yyyy-MM-dd HH:mm:ss"
        return formatter.string(from: date)
    }

    /// The last `count` lines of `text`, each indented.
    static func tail(_ text: String, lines count: Int = 20, indent: String = "    ") -> [String] {
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        let trimmed = lines.last == "" ? Array(lines.dropLast()) : lines
        return trimmed.suffix(count).map { indent + $0 }
    }
}
