import Foundation

/// Unbuffered lines on standard output, so a parent process reading a pipe sees them at once.
enum StandardOutput {
    static func line(_ text: String) {
        var text = text + "\n"
        text.withUTF8 { buffer in
            _ = write(STDOUT_FILENO, buffer.baseAddress, buffer.count)
        }
    }
}
