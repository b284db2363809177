import FinchAPI
import Foundation
#if canImport(Glibc)
import Glibc
#endif
import Logging
import Synchronization

/// The access token of each connection, from the tokens file, reloaded when the file changes.
/// A file that becomes invalid keeps the last good tokens (and says so in the log).
public final class TokenStore: Sendable {
    private struct State {
        var tokens: [String: FinchAccessToken]
        var signature: FileSignature?
    }

    /// What identifies one version of the file, following symlinks: Kubernetes mounts a
    /// Secret as `tokens.json -> ..data/tokens.json` and swaps the `..data` link on update,
    /// so the link itself never changes but the file it leads to does.
    private struct FileSignature: Equatable {
        let resolvedPath: String
        let device: UInt64
        let inode: UInt64
        let size: Int64
        let modifiedSeconds: Int
        let modifiedNanoseconds: Int
    }

    public let path: String
    private let state: Mutex<State>
    private let logger: Logger

    /// Loads the file.
    /// - Throws: ``TokensFile/LoadError`` naming the file and the problem (never a token).
    public init(path: String, logger: Logger) throws(TokensFile.LoadError) {
        self.path = path
        self.logger = logger
        let signature = Self.signature(path)
        let tokens = try TokensFile.load(path: path)
        state = Mutex(State(tokens: tokens.mapValues(FinchAccessToken.init), signature: signature))
    }

    public func token(for connectionID: String) -> FinchAccessToken? {
        state.withLock { $0.tokens[connectionID] }
    }

    public var count: Int { state.withLock { $0.tokens.count } }

    /// Reloads the file if its size, modification time or inode changed.
    /// - Returns: `true` when new tokens were loaded, `false` when unchanged, `nil` on failure.
    @discardableResult
    public func reloadIfChanged() -> Bool? {
        let signature = Self.signature(path)
        guard signature != state.withLock({ $0.signature }) else { return false }
        do {
            let tokens = try TokensFile.load(path: path)
            state.withLock { $0 = State(tokens: tokens.mapValues(FinchAccessToken.init), signature: signature) }
            logger.info("tokens file reloaded", metadata: ["path": "\(path)", "connections": "\(tokens.count)"])
            return true
        } catch {
            // Keep the last good tokens; try again when the file changes once more.
            state.withLock { $0.signature = signature }
            logger.error("tokens file not reloaded; keeping the previous tokens", metadata: ["path": "\(path)", "reason": "\(error)"])
            return nil
        }
    }

    private static func signature(_ path: String) -> FileSignature? {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }  // stat follows symlinks
        return FileSignature(
            resolvedPath: URL(fileURLWithPath: path).resolvingSymlinksInPath().path,
            device: UInt64(info.st_dev), inode: UInt64(info.st_ino), size: Int64(info.st_size),
            modifiedSeconds: Int(info.st_mtim.tv_sec), modifiedNanoseconds: Int(info.st_mtim.tv_nsec)
        )
    }
}
