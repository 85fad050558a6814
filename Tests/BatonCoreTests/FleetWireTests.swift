import BatonCore
import Foundation
import Testing

/// The fleet's values as etcd keeps them: names with `_` in dictionary keys (agents,
/// hosts, labels) must come back as they went, not through the snake_case conversion
/// the wire's field names get.
@Suite("fleet wire values")
struct FleetWireTests {
    @Test func dictionaryKeysKeepTheirSpelling() throws {
        let plan = FleetPlan(id: "fleet-3", version: "2.0",
                             releases: ["my_agent": FleetRelease(url: "https://r.example/a.tgz", sha256: String(repeating: "a", count: 64)),
                                        "webApp": FleetRelease(url: "https://r.example/b.tgz", sha256: String(repeating: "b", count: 64))],
                             canary: 2, maxUnavailable: 3, soakMs: 1000, exclude: ["host_9"],
                             previous: FleetVersion(version: "1.0", releases: [:]), by: "ops", at: Timestamp(milliseconds: 1))
        let text = String(decoding: try WireJSON.encoder.encode(plan), as: UTF8.self)
        #expect(text.contains("\"my_agent\"") && text.contains("\"webApp\"") && text.contains("\"max_unavailable\":3"), "\(text)")
        #expect(try WireJSON.decoder.decode(FleetPlan.self, from: Data(text.utf8)) == plan)
        #expect(plan.number == 3)

        let state = FleetRolloutState(id: "fleet-3", version: "2.0", phase: .paused, failed: ["host_1": "agent x rewound"],
                                      reason: "why", coordinator: "h_0", updatedAt: Timestamp(milliseconds: 2))
        let decoded = try WireJSON.decoder.decode(FleetRolloutState.self, from: WireJSON.encoder.encode(state))
        #expect(decoded == state)

        let host = FleetHostStatus(host: "web_1", labels: ["zone_name": "eu_1"], batondVersion: "0.1.0", machineVersion: nil,
                                   agents: [.init(name: "my_agent", running: "1.0", desired: nil, state: .running, rewound: false)],
                                   rollout: .init(id: "fleet-3", version: "2.0", phase: .waitingSlot), updatedAt: Timestamp(milliseconds: 3))
        let hostText = String(decoding: try WireJSON.encoder.encode(host), as: UTF8.self)
        #expect(hostText.contains("\"zone_name\":\"eu_1\"") && hostText.contains("\"waiting_slot\""), "\(hostText)")
        #expect(try WireJSON.decoder.decode(FleetHostStatus.self, from: Data(hostText.utf8)) == host)
    }

    @Test func whatARolloutStateAdmits() {
        func state(_ phase: FleetRolloutState.Phase, all: Bool = false) -> FleetRolloutState {
            FleetRolloutState(id: "fleet-1", version: "2.0", phase: phase, admitted: ["h1"], all: all, coordinator: "h0",
                              updatedAt: Timestamp(milliseconds: 0))
        }
        for phase in FleetRolloutState.Phase.allCases {
            let expected: (member: Bool, other: Bool) = switch phase {
            case .canary: (true, false)
            case .rolling: (true, false)
            case .done, .proceeding: (true, true)
            case .soaking, .halting, .migrating, .restoring, .paused, .restored: (false, false)
            }
            #expect(state(phase).admits("h1") == expected.member, "\(phase)")
            #expect(state(phase).admits("h2") == expected.other, "\(phase)")
        }
        #expect(state(.rolling, all: true).admits("h2"))
        #expect(!state(.paused, all: true).admits("h1"))
    }
}
