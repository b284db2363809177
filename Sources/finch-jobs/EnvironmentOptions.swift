import ArgumentParser

/// Turns `FINCH_JOBS_<OPTION>` environment variables into command-line options, for every
/// option the chosen command declares and the command line does not already give.
///
/// The option names are read from the command's own declarations (property `maxInFlight` is
/// `--max-in-flight`, as ArgumentParser derives it), so a new option gets its variable for free.
enum EnvironmentOptions {
    static let prefix = "FINCH_JOBS_"

    static func apply(to arguments: [String], environment: [String: String], commands: [any ParsableCommand.Type]) throws -> [String] {
        guard let name = arguments.first,
              let command = commands.first(where: { $0._commandName == name })
        else { return arguments }
        var result = arguments
        for option in declaredOptions(of: command) {
            let variable = variableName(option.name)
            guard let value = environment[variable], !value.isEmpty else { continue }
            let flag = "--\(option.name)"
            if arguments.contains(where: { $0 == flag || $0.hasPrefix(flag + "=") }) { continue }
            switch option.kind {
            case .flag:
                switch value.lowercased() {
                case "1", "true", "yes", "on": result.append(flag)
                case "0", "false", "no", "off": break
                default: throw ValidationError("\(variable) must be true or false, not \"\(value)\".")
                }
            case .repeatable:
                // Several values are separated by newlines (values themselves may hold commas).
                for item in value.split(whereSeparator: \.isNewline) where !item.isEmpty {
                    result.append("\(flag)=\(item)")
                }
            case .single:
                result.append("\(flag)=\(value)")
            }
        }
        return result
    }

    static func variableName(_ option: String) -> String {
        prefix + option.uppercased().replacingOccurrences(of: "-", with: "_")
    }

    struct DeclaredOption: Hashable {
        enum Kind { case single, repeatable, flag }
        let name: String
        let kind: Kind
    }

    /// The long options a command declares, found by reflecting over an unparsed instance
    /// (parsing would run the command's validation).
    static func declaredOptions(of command: any ParsableCommand.Type) -> [DeclaredOption] {
        options(in: command.init())
    }

    private static func options(in value: Any) -> [DeclaredOption] {
        var found: [DeclaredOption] = []
        for child in Mirror(reflecting: value).children {
            guard let label = child.label, label.hasPrefix("_") else { continue }
            let typeName = String(describing: type(of: child.value))
            if let group = child.value as? any ReflectableOptionGroup {
                found += options(in: type(of: group).groupType.init())
                continue
            }
            let name = kebabCase(String(label.dropFirst()))
            if typeName.hasPrefix("Flag<") {
                found.append(DeclaredOption(name: name, kind: .flag))
            } else if typeName.hasPrefix("Option<Array") {
                found.append(DeclaredOption(name: name, kind: .repeatable))
            } else if typeName.hasPrefix("Option<") {
                found.append(DeclaredOption(name: name, kind: .single))
            }
        }
        return found
    }

    /// `maxInFlight` → `max-in-flight`, `httpPort` → `http-port`.
    static func kebabCase(_ name: String) -> String {
        var result = ""
        for character in name {
            if character.isUppercase {
                if !result.isEmpty { result.append("-") }
                result.append(contentsOf: character.lowercased())
            } else {
                result.append(character)
            }
        }
        return result
    }
}

/// Lets reflection reach the arguments type inside an `@OptionGroup`.
protocol ReflectableOptionGroup {
    static var groupType: any ParsableArguments.Type { get }
}

extension OptionGroup: ReflectableOptionGroup {
    static var groupType: any ParsableArguments.Type { Value.self }
}
