import FinchAPI
import Foundation

/// The tokens file: a JSON object `{"<connection_id>": "<access_token>"}`.
public enum TokensFile {
    public struct LoadError: Error, CustomStringConvertible {
        public let description: String
    }

    /// Reads and validates the file.
    /// - Throws: ``LoadError`` naming the file and what is wrong with it (never a token).
    public static func load(path: String) throws(LoadError) -> [String: String] {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw LoadError(description: "cannot read the tokens file \(path)")
        }
        return try parse(data, path: path)
    }

    public static func parse(_ data: Data, path: String) throws(LoadError) -> [String: String] {
        guard let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            throw LoadError(description: "the tokens file \(path) must be a JSON object {\"<connection_id>\": \"<access_token>\"}")
        }
        var tokens: [String: String] = [:]
        for (connection, value) in object {
            guard let token = value as? String, !token.isEmpty, !connection.isEmpty else {
                throw LoadError(description: "the tokens file \(path) has an entry for \"\(connection)\" that is not a non-empty string")
            }
            guard FinchAccessToken.fitsHeader(token) else {
                throw LoadError(description: "the tokens file \(path) has a token for \"\(connection)\" with a character an HTTP header cannot carry (a space, a line break or another control character, or non-ASCII)")
            }
            tokens[connection] = token
        }
        return tokens
    }
}
