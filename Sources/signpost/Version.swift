/// Signpost's version: `signpost --version`, and the .deb's (`make deb` reads it from here).
let signpostVersion = "0.3.0"
