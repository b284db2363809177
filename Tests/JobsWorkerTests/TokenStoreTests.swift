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

    @Test("A token an HTTP header cannot carry (a trailing newline a template kept, a space, non-ASCII) is refused, and the sentence does not quote it")
    func unsendableToken() throws {
        for token in ["s3cret-token\n", "s3cret token", "s3cret-tökén", "s3cret\u{7F}"] {
            let path = try writeTokensFile(["c-1": token])
            let error = #expect(throws: TokensFile.LoadError.self) { _ = try TokenStore(path: path, logger: quietLogger("tokens")) }
            #expect(error?.description.contains("\"c-1\"") == true)
            #expect(error?.description.contains("s3cret") == false)
        }
    }

    @Test("A token's description is redacted")
    func redacted() {
        let token = FinchAccessToken("super-secret")
        #expect("\(token)" == "<redacted>")
        #expect(String(reflecting: token) == "<redacted>")
    }

    @Test("A Kubernetes Secret volume: tokens.json -> ..data/tokens.json, updated by swapping the ..data link, is reloaded")
    func secretVolumeSymlinks() throws {
        let files = FileManager.default
        let volume = files.temporaryDirectory.appendingPathComponent(uniqueName("secret-volume"))
        try files.createDirectory(at: volume, withIntermediateDirectories: true)
        defer { try? files.removeItem(at: volume) }
        /// Writes a timestamped directory with the file, as the kubelet does.
        func version(_ name: String, _ json: String) throws {
            let directory = volume.appendingPathComponent(name)
            try files.createDirectory(at: directory, withIntermediateDirectories: true)
            try Data(json.utf8).write(to: directory.appendingPathComponent("tokens.json"))
        }
        try version("..2026_11_29_10_00_00.1", #"{"c-1":"one"}"#)
        try files.createSymbolicLink(atPath: volume.appendingPathComponent("..data").path, withDestinationPath: "..2026_11_29_10_00_00.1")
        try files.createSymbolicLink(atPath: volume.appendingPathComponent("tokens.json").path, withDestinationPath: "..data/tokens.json")
        let path = volume.appendingPathComponent("tokens.json").path
        let store = try TokenStore(path: path, logger: quietLogger("tokens"))
        #expect(store.token(for: "c-1")?.secret == "one")
        #expect(store.reloadIfChanged() == false)

        // The update: a new directory (same size content), then an atomic rename of a new ..data link.
        try version("..2026_11_29_10_05_00.2", #"{"c-1":"uno"}"#)
        try files.createSymbolicLink(atPath: volume.appendingPathComponent("..data_tmp").path, withDestinationPath: "..2026_11_29_10_05_00.2")
        #expect(rename(volume.appendingPathComponent("..data_tmp").path, volume.appendingPathComponent("..data").path) == 0)
        try files.removeItem(at: volume.appendingPathComponent("..2026_11_29_10_00_00.1"))
        #expect(store.reloadIfChanged() == true, "the link swap is a change")
        #expect(store.token(for: "c-1")?.secret == "uno")
    }
}
