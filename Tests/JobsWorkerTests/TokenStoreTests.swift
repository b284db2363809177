import FinchAPI
import Foundation
import JobsWorker
import Logging
import TestSupport
import Testing

@Suite("Tokens file")
struct TokenStoreTests {
    @Test("A changed file is reloaded; an invalid one keeps the last good tokens")
    func reload() throws {
        let path = try writeTokensFile(["c-1": "one"])
        let store = try TokenStore(path: path, logger: quietLogger("tokens"))
        #expect(store.token(for: "c-1")?.secret == "one")
        #expect(store.reloadIfChanged() == false, "unchanged file: nothing to do")

        try Data(#"{"c-1":"uno","c-2":"two"}"#.utf8).write(to: URL(fileURLWithPath: path))
        #expect(store.reloadIfChanged() == true)
        #expect(store.token(for: "c-1")?.secret == "uno")
        #expect(store.token(for: "c-2")?.secret == "two")

        try Data("{not json".utf8).write(to: URL(fileURLWithPath: path))
        #expect(store.reloadIfChanged() == nil, "an invalid file is a failed reload")
        #expect(store.token(for: "c-2")?.secret == "two", "the last good tokens stay")
    }

    @Test("A file that is not an object of strings is refused with a sentence naming the file, never a token")
    func invalid() throws {
        for content in [#"["a"]"#, #"{"c-1": 7}"#, #"{"c-1": ""}"#] {
            let path = try writeTokensFile([:])
            try Data(content.utf8).write(to: URL(fileURLWithPath: path))
            let error = #expect(throws: TokensFile.LoadError.self) { _ = try TokenStore(path: path, logger: quietLogger("tokens")) }
            #expect(error?.description.contains(path) == true)
        }
    }

    @Test("A token's description is redacted")
    func redacted() {
        let token = FinchAccessToken("super-secret")
        #expect("\(token)" == "<redacted>")
        #expect(String(reflecting: token) == "<redacted>")
    }
}
