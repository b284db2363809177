import Foundation

/// Unbuffered lines on standard output, so a parent process reading a pipe sees them at once.
enum StandardOutput {
    static func line(_ text: String) {
        write(text + "\n")
    }

    static func write(_ text: String) {
        var text = text
        text.withUTF8 { buffer in
            _ = Foundation.write(STDOUT_FILENO, buffer.baseAddress, buffer.count)
        }
    }
}
