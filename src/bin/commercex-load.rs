//! `commercex-load`: drives a CommerceX node or cluster over its API as shoppers would and prints what it sustained
//! (see `commercex::load` and the README's "Load generator").

use std::process::ExitCode;

use commercex::load::{self, args};

#[tokio::main]
async fn main() -> ExitCode {
    let options = match args::parse(std::env::args().skip(1), |name| std::env::var(name).ok()) {
        Ok(args::Command::Run(options)) => *options,
        Ok(args::Command::Help) => {
            println!("{}", args::USAGE);
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("commercex-load: {e}\n\n{}", args::USAGE);
            return ExitCode::from(2);
        }
    };
    let json = options.json;
    let interrupt = async {
        // Without a ctrl-c handler the run simply goes to its end.
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    match load::run(options, interrupt).await {
        Ok(report) => {
            println!("{report}");
            if json {
                match serde_json::to_string(&report) {
                    Ok(line) => println!("{line}"),
                    Err(e) => eprintln!("commercex-load: the report as JSON: {e}"),
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("commercex-load: {e}");
            ExitCode::FAILURE
        }
    }
}
