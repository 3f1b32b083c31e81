//! The page shell (header, navigation, sign-out), the login page and the live region.

use maud::{html, Markup, DOCTYPE};

use crate::assets;

/// What a page needs to know about the signed-in session.
pub struct Session {
    /// Sent back with every state-changing form (a hidden `csrf` field).
    pub csrf: String,
    /// False when the caller authenticated with `Authorization: Bearer` (no cookie, no forms
    /// to protect): forms are still rendered, with an empty token.
    pub cookie: bool,
}

/// One page: its title, which navigation entry is current, and the session.
pub struct Page<'a> {
    pub title: &'a str,
    pub nav: &'a str,
    pub session: &'a Session,
}

fn head(title: &str) -> Markup {
    let v = assets::version();
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · walfleet" }
            link rel="icon" href="data:,";
            link rel="stylesheet" href={ "/assets/app.css?v=" (v) };
            script src={ "/assets/app.js?v=" (v) } defer {}
        }
    }
}

/// A whole document: `controls` stay as they are between refreshes (filters, forms),
/// `live` is the region the script fetches again every few seconds.
pub fn document(p: &Page, controls: Markup, live: Markup) -> String {
    let nav = [("fleet", "/", "Fleet"), ("events", "/events", "Events"), ("proof", "/proof", "Proof of persistence")];
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(p.title))
            body {
                header.top {
                    a.brand href="/" { span.logo { "◆" } " walfleet" }
                    nav {
                        @for (key, href, label) in nav {
                            a href=(href) class=[(key == p.nav).then_some("current")] { (label) }
                        }
                    }
                    span.spacer {}
                    span.live-state #live-state title="the page refreshes itself every few seconds" { "live" }
                    @if p.session.cookie {
                        form.inline method="post" action="/logout" {
                            input type="hidden" name="csrf" value=(p.session.csrf);
                            button.link type="submit" { "Sign out" }
                        }
                    }
                }
                main {
                    h1 { (p.title) }
                    (controls)
                    div #live data-every=(crate::LIVE_EVERY_MS) { (live) }
                }
            }
        }
    }
    .into_string()
}

/// The sign-in page: one field for the admin token. `error` explains a refused attempt.
pub fn login(next: &str, error: Option<&str>) -> String {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head("Sign in"))
            body.login {
                form.login-box method="post" action="/login" {
                    h1 { span.logo { "◆" } " walfleet" }
                    p.muted { "Sign in with an admin token (" code { "walfleet serve" } " printed one on first start, or " code { "WALFLEET_ADMIN_TOKEN" } ")." }
                    @if let Some(e) = error {
                        p.error role="alert" { (e) }
                    }
                    label for="token" { "Admin token" }
                    input #token type="password" name="token" autocomplete="current-password" required autofocus;
                    input type="hidden" name="next" value=(next);
                    button type="submit" { "Sign in" }
                }
            }
        }
    }
    .into_string()
}

/// A status badge.
pub fn badge(status: &str) -> Markup {
    html! { span class={ "badge s-" (status) } { (status) } }
}

/// A form that POSTs one action with the session's CSRF token.
pub fn action(session: &Session, url: &str, label: &str, fields: Markup) -> Markup {
    html! {
        form.action method="post" action=(url) {
            input type="hidden" name="csrf" value=(session.csrf);
            (fields)
            button type="submit" { (label) }
        }
    }
}

/// A page that only says something (an action refused, a database not found).
pub fn notice(session: &Session, title: &str, message: &str, back: &str) -> String {
    let body = html! {
        p.error role="alert" { (message) }
        p { a href=(back) { "← back" } }
    };
    document(&Page { title, nav: "", session }, html! {}, body)
}
