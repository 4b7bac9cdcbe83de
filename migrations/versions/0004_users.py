"""Users who may log in (admins steer collection), and login attempts counted by the login limiter.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from service.db.migrate import execute_script

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    execute_script("""
    CREATE TABLE users (
        id            integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        email         text        NOT NULL CHECK (email <> ''),
        -- argon2id, in argon2's own encoding (parameters and salt included); never the password.
        password_hash text        NOT NULL,
        is_admin      boolean     NOT NULL DEFAULT false,
        is_active     boolean     NOT NULL DEFAULT true,
        created_at    timestamptz NOT NULL DEFAULT now(),
        updated_at    timestamptz
    );
    -- Unique whatever the case: Admin@X and admin@x are one account (the email keeps the case it was given).
    CREATE UNIQUE INDEX users_email_key ON users (lower(email));

    -- One row per login attempt per limiter key (a keyed hash of the email, or of the client address),
    -- written before the password is checked (failed = false while it is), marked failed when the
    -- password was wrong and deleted when it was right; every process counts the same rows. Rows
    -- older than the window are pruned on write.
    CREATE TABLE login_attempts (
        id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        key          text        NOT NULL,
        attempted_at timestamptz NOT NULL DEFAULT clock_timestamp(),
        failed       boolean     NOT NULL DEFAULT false
    );
    CREATE INDEX login_attempts_key ON login_attempts (key, attempted_at);
    CREATE INDEX login_attempts_age ON login_attempts (attempted_at);
    """)


def downgrade() -> None:
    execute_script("""
    DROP TABLE login_attempts;
    DROP TABLE users;
    """)
