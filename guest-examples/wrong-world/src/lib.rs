//! `wrong-world`: a valid component that exports `example:greeter/greet`
//! instead of `cairn:task/task`. Used to test that the engine refuses it
//! with a message naming what it does export.

// Exports exist only in the wasm build; on the host nothing calls this code.
#![cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]

wit_bindgen::generate!({
    inline: "
        package example:greeter@1.0.0;

        interface greet {
            hello: func(name: string) -> string;
        }

        world greeter {
            export greet;
        }
    ",
    world: "greeter",
});

struct Greeter;

impl exports::example::greeter::greet::Guest for Greeter {
    fn hello(name: String) -> String {
        format!("hello, {name}")
    }
}

#[cfg(target_arch = "wasm32")]
export!(Greeter);
